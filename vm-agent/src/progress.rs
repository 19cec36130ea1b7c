//! Proof that a subsystem's loop still comes round, for systemd's watchdog.
//!
//! A task that has not exited may still be wedged: stuck forever in an await, so the tunnel,
//! the slice or control go unwatched while systemd hears that all is well. Each subsystem's
//! loop marks its progress every time it comes round, together with the longest wait it may
//! legitimately make before the next mark (a backoff, an HTTP timeout, a grace period). The
//! health loop pings the watchdog only while no mark is overdue ([`healthy`]).
//!
//! A mark must only ever be made by the loop it vouches for, right before a wait that is
//! bounded: never from a side task or a timer that runs whatever the loop does, which would
//! keep a wedged loop looking alive.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Added to every declared wait: scheduling, a slow disk, a loaded VM.
pub const SLACK: Duration = Duration::from_secs(10);

/// A subsystem's last sign of life and how long it may take until the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub at: Instant,
    pub within: Duration,
}

impl Mark {
    /// Whether the next mark should have come by `now`.
    pub fn overdue(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) > self.within
    }
}

/// The subsystem's end: it marks its progress.
#[derive(Debug)]
pub struct Progress(watch::Sender<Mark>);

impl Progress {
    /// A fresh mark: the subsystem is starting and must come round within [`SLACK`].
    pub fn new() -> (Self, watch::Receiver<Mark>) {
        let (sender, receiver) = watch::channel(Mark {
            at: Instant::now(),
            within: SLACK,
        });
        (Self(sender), receiver)
    }

    /// The loop came round now, and will again within `wait` (plus [`SLACK`]).
    pub fn next_within(&self, wait: Duration) {
        self.0.send_replace(Mark {
            at: Instant::now(),
            within: wait.saturating_add(SLACK),
        });
    }
}

/// `Ok` when every subsystem has marked its progress in time, else the first that has not.
pub fn healthy<'a>(marks: &[(&'a str, Mark)], now: Instant) -> Result<(), &'a str> {
    match marks.iter().find(|(_, mark)| mark.overdue(now)) {
        Some((name, _)) => Err(name),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(at: Instant, within_s: u64) -> Mark {
        Mark {
            at,
            within: Duration::from_secs(within_s),
        }
    }

    #[test]
    fn every_subsystem_in_time_is_healthy() {
        let start = Instant::now();
        let marks = [("a", mark(start, 5)), ("b", mark(start, 60))];
        assert_eq!(healthy(&marks, start), Ok(()));
        assert_eq!(
            healthy(&marks, start + Duration::from_secs(5)),
            Ok(()),
            "exactly on time is in time"
        );
        assert_eq!(healthy(&[], start + Duration::from_hours(1)), Ok(()));
    }

    #[test]
    fn the_first_overdue_subsystem_is_named() {
        let start = Instant::now();
        let marks = [
            ("quick", mark(start, 5)),
            ("slow", mark(start, 60)),
            ("also quick", mark(start, 5)),
        ];
        assert_eq!(
            healthy(&marks, start + Duration::from_secs(6)),
            Err("quick")
        );
        assert_eq!(
            healthy(&marks, start + Duration::from_secs(61)),
            Err("quick")
        );
        let recent = [
            ("quick", mark(start + Duration::from_secs(58), 5)),
            marks[1],
        ];
        assert_eq!(
            healthy(&recent, start + Duration::from_secs(61)),
            Err("slow"),
            "a long legitimate wait is still bounded"
        );
    }

    #[test]
    fn a_mark_made_before_now_is_not_overdue_by_clock_skew() {
        let start = Instant::now();
        let later = mark(start + Duration::from_secs(10), 0);
        assert!(!later.overdue(start), "a mark from the future is fresh");
    }

    #[tokio::test(start_paused = true)]
    async fn marks_carry_the_slack() {
        let (progress, marks) = Progress::new();
        assert_eq!(marks.borrow().within, SLACK);
        progress.next_within(Duration::from_secs(30));
        let mark = *marks.borrow();
        assert_eq!(mark.within, Duration::from_secs(30) + SLACK);
        assert!(!mark.overdue(Instant::now() + Duration::from_secs(30) + SLACK));
        assert!(mark.overdue(Instant::now() + Duration::from_secs(31) + SLACK));
    }
}
