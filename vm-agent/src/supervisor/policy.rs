//! The supervisor's decisions, apart from the processes they are about: what a readiness
//! sample means ([`Supervisor::observe`]: up, down, unready for too long, stable enough to
//! reset the backoff) and what follows the end of a run ([`Supervisor::after`]: the wait before
//! the next start, permanent failures, crash loops). Both take the time as an argument, so the
//! tests below drive them through minutes without waiting.

use std::time::{Duration, Instant};

use control_api::agent::TunnelState;
use log::Level;

use super::{PERMANENT_EXIT, Supervisor};
use crate::backoff::Delay;
use crate::event;
use crate::logging::ids;

/// What one run of cloudflared has shown so far.
pub(super) struct Run {
    /// Since when it has been ready without interruption.
    pub(super) ready_since: Option<Instant>,
    /// Since when it has been without a ready connection (its start, at first).
    pub(super) unready_since: Instant,
    /// Ready for the whole stable period in this run (the backoff was reset).
    pub(super) stable: bool,
}

/// Why a run of cloudflared ended.
pub(super) enum Outcome {
    Exited(i32),
    /// We stopped it: no ready connection for too long.
    Unready {
        exit: i32,
        for_s: u64,
    },
    SpawnFailed(String),
    Shutdown,
}

impl Supervisor {
    /// Takes one readiness sample into account. Returns how long cloudflared has been without
    /// a ready connection when that is long enough to restart it.
    pub(super) fn observe(
        &mut self,
        run: &mut Run,
        connections: Option<u32>,
        now: Instant,
    ) -> Option<Duration> {
        let Some(connections) = connections else {
            if run.ready_since.take().is_some() {
                run.unready_since = now;
                run.stable = false;
                event!(
                    Level::Warn,
                    "supervisor",
                    id = ids::TUNNEL_DOWN,
                    "tunnel down: cloudflared has no ready connection"
                );
                self.status.send_modify(|s| s.ready_connections = 0);
                self.enter(TunnelState::Unready, "no ready connection".to_owned());
            }
            let unready_for = now.duration_since(run.unready_since);
            return (unready_for >= self.config.unready_restart_after).then_some(unready_for);
        };
        if run.ready_since.is_none() {
            run.ready_since = Some(now);
            event!(
                Level::Info,
                "supervisor",
                id = ids::TUNNEL_UP,
                "tunnel up: {connections} ready connections"
            );
        }
        self.status
            .send_modify(|s| s.ready_connections = connections);
        self.enter(
            TunnelState::Ready,
            format!("ready with {connections} connections"),
        );
        let stable_now = run
            .ready_since
            .is_some_and(|since| now.duration_since(since) >= self.config.stable_after);
        if !run.stable && stable_now {
            run.stable = true;
            self.backoff.reset();
            let was_looping = self.status.borrow().crash_loop;
            self.status.send_modify(|s| {
                s.crash_loop = false;
                s.backoff_attempt = 0;
                s.backoff_ceiling_ms = None;
            });
            event!(
                Level::Info,
                "supervisor",
                "cloudflared ready for {} s: restart backoff reset{}",
                self.config.stable_after.as_secs(),
                if was_looping { ", crash loop over" } else { "" }
            );
        }
        None
    }

    /// Records how a run ended at `now` and decides how long to wait before the next.
    pub(super) fn after(&mut self, outcome: Outcome, now: Instant) -> Duration {
        let delay = self.backoff.next(now);
        let crash_loop = self.backoff.crash_loop(now);
        let (exit, why) = match outcome {
            Outcome::Exited(code) => (Some(code), format!("cloudflared exited with code {code}")),
            Outcome::Unready { exit, for_s } => (
                Some(exit),
                format!(
                    "cloudflared had no ready connection for {for_s} s; stopped it (exit {exit})"
                ),
            ),
            Outcome::SpawnFailed(error) => (None, error),
            Outcome::Shutdown => (None, String::new()),
        };
        let permanent = exit == Some(PERMANENT_EXIT) || exit.is_none();
        let wait = if permanent {
            delay.wait.max(self.config.failed_retry)
        } else {
            delay.wait
        };
        let was_looping = self.status.borrow().crash_loop;
        self.status.send_modify(|s| {
            s.restarts = s.restarts.saturating_add(1);
            s.last_exit = exit.or(s.last_exit);
            s.crash_loop = crash_loop;
            s.pid = None;
            s.ready_connections = 0;
            s.next_start_in_ms = Some(millis(wait));
            s.backoff_ceiling_ms = Some(millis(delay.ceiling));
            s.backoff_attempt = delay.attempt;
        });
        if permanent {
            self.enter(
                TunnelState::Failed,
                format!("{why}; next try in {} s", wait.as_secs()),
            );
            event!(
                Level::Error,
                "supervisor",
                id = ids::CLOUDFLARED_FAILED,
                "{why}: a usage error or an invalid tunnel token, which retrying soon will not fix; next try in {} s",
                wait.as_secs()
            );
        } else {
            self.enter(
                TunnelState::Backoff,
                format!("{why}; restarting in {} ms", millis(wait)),
            );
            log_restart(&why, wait, delay);
        }
        if crash_loop && !was_looping {
            event!(
                Level::Error,
                "supervisor",
                id = ids::CRASH_LOOP,
                "cloudflared is crash-looping: {} restarts within {} s",
                self.config.crash_loop_restarts,
                self.config.crash_loop_window.as_secs()
            );
        }
        wait
    }
}

fn log_restart(why: &str, wait: Duration, delay: Delay) {
    event!(
        Level::Warn,
        "supervisor",
        id = ids::CLOUDFLARED_RESTART,
        "{why}; restarting in {} ms (attempt {}, ceiling {} ms)",
        millis(wait),
        delay.attempt,
        millis(delay.ceiling)
    );
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::sync::watch;

    use super::*;
    use crate::config::{Cloudflared, TunnelToken};
    use crate::progress::Progress;
    use crate::reaper::Children;
    use crate::supervisor::TunnelStatus;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> Cloudflared {
        Cloudflared {
            binary: PathBuf::from("/nonexistent/cloudflared"),
            token: TunnelToken::Environment("eyJhIjoidGVzdCJ9".to_owned()),
            metrics: "127.0.0.1:9".parse().unwrap(),
            extra_args: Vec::new(),
            ready_poll: SECOND,
            unready_restart_after: Duration::from_mins(1),
            stop_grace: Duration::from_secs(5),
            backoff_initial: SECOND,
            backoff_max: Duration::from_mins(1),
            stable_after: Duration::from_mins(2),
            crash_loop_restarts: 3,
            crash_loop_window: Duration::from_mins(10),
            failed_retry: Duration::from_mins(5),
            log_lines_per_minute: 10,
        }
    }

    fn supervisor() -> (Supervisor, watch::Receiver<TunnelStatus>) {
        // The probe client needs one, as in `main`; a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (status, receiver) = watch::channel(TunnelStatus::new());
        let (progress, _) = Progress::new();
        let supervisor = Supervisor::new(config(), status, Children::default(), progress);
        (supervisor, receiver)
    }

    /// A run that started at `start`.
    fn run(start: Instant) -> Run {
        Run {
            ready_since: None,
            unready_since: start,
            stable: false,
        }
    }

    #[test]
    fn readiness_comes_and_goes_with_ready_connections() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let mut run = run(t0);
        assert_eq!(supervisor.observe(&mut run, None, t0 + SECOND), None);
        assert_eq!(
            status.borrow().state,
            TunnelState::Starting,
            "not ready yet is still starting"
        );

        assert_eq!(supervisor.observe(&mut run, Some(2), t0 + 2 * SECOND), None);
        assert_eq!(run.ready_since, Some(t0 + 2 * SECOND));
        let ready = status.borrow().clone();
        assert_eq!(
            (ready.state, ready.ready_connections),
            (TunnelState::Ready, 2)
        );
        assert_eq!(ready.detail, "ready with 2 connections");

        assert_eq!(supervisor.observe(&mut run, Some(4), t0 + 3 * SECOND), None);
        assert_eq!(
            run.ready_since,
            Some(t0 + 2 * SECOND),
            "still the same ready spell"
        );
        assert_eq!(status.borrow().ready_connections, 4);

        assert_eq!(supervisor.observe(&mut run, None, t0 + 4 * SECOND), None);
        let unready = status.borrow().clone();
        assert_eq!(
            (unready.state, unready.ready_connections),
            (TunnelState::Unready, 0)
        );
        assert_eq!(
            (run.ready_since, run.unready_since),
            (None, t0 + 4 * SECOND)
        );
    }

    #[test]
    fn it_is_restarted_after_unready_restart_after_without_a_connection() {
        let (mut supervisor, _status) = supervisor();
        let t0 = Instant::now();
        let mut run = run(t0);
        let limit = Duration::from_mins(1);
        let almost = Duration::from_secs(59);
        assert_eq!(supervisor.observe(&mut run, None, t0 + almost), None);
        assert_eq!(supervisor.observe(&mut run, None, t0 + limit), Some(limit));

        // Once it was ready, the time without connections counts from the loss.
        let mut run = self::run(t0);
        supervisor.observe(&mut run, Some(1), t0 + 10 * SECOND);
        let lost = t0 + 100 * SECOND;
        assert_eq!(supervisor.observe(&mut run, None, lost), None);
        assert_eq!(supervisor.observe(&mut run, None, lost + almost), None);
        assert_eq!(
            supervisor.observe(&mut run, None, lost + limit + SECOND),
            Some(limit + SECOND)
        );
    }

    #[test]
    fn restarts_last_exit_and_the_wait_are_recorded() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let wait = supervisor.after(Outcome::Exited(1), t0);
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (1, Some(1)));
        assert_eq!(s.state, TunnelState::Backoff);
        assert!(
            wait <= SECOND,
            "the first wait is drawn under the initial ceiling"
        );
        assert_eq!(s.next_start_in_ms, Some(millis(wait)));
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (1, Some(1_000)));
        assert_eq!((s.pid, s.ready_connections), (None, 0));

        supervisor.after(
            Outcome::Unready {
                exit: 143,
                for_s: 60,
            },
            t0 + SECOND,
        );
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (2, Some(143)));
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (2, Some(2_000)));
        assert!(
            s.detail.contains("no ready connection for 60 s"),
            "{}",
            s.detail
        );

        // A failed start has no exit code: the last one stays.
        supervisor.after(
            Outcome::SpawnFailed("cannot start".to_owned()),
            t0 + 2 * SECOND,
        );
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (3, Some(143)));
    }

    #[test]
    fn exit_255_and_failed_starts_wait_at_least_failed_retry() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let wait = supervisor.after(Outcome::Exited(PERMANENT_EXIT), t0);
        assert!(wait >= Duration::from_mins(5), "{wait:?}");
        let s = status.borrow().clone();
        assert_eq!((s.state, s.last_exit), (TunnelState::Failed, Some(255)));
        assert_eq!(s.next_start_in_ms, Some(millis(wait)));

        let wait = supervisor.after(Outcome::SpawnFailed("no such file".to_owned()), t0);
        assert!(wait >= Duration::from_mins(5), "{wait:?}");
        assert_eq!(status.borrow().state, TunnelState::Failed);
        assert!(
            status
                .borrow()
                .detail
                .starts_with("no such file; next try in")
        );

        // Any other exit is an ordinary restart.
        let wait = supervisor.after(Outcome::Exited(1), t0 + SECOND);
        assert!(wait < Duration::from_mins(5), "{wait:?}");
        assert_eq!(status.borrow().state, TunnelState::Backoff);
    }

    #[test]
    fn too_many_restarts_within_the_window_are_a_crash_loop() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        supervisor.after(Outcome::Exited(1), t0);
        supervisor.after(Outcome::Exited(1), t0 + 10 * SECOND);
        assert!(!status.borrow().crash_loop);
        supervisor.after(Outcome::Exited(1), t0 + 20 * SECOND);
        assert!(status.borrow().crash_loop, "3 restarts within 600 s");

        // Restarts spread wider than the window are not.
        let (mut supervisor, status) = self::supervisor();
        for n in 0..5 {
            supervisor.after(Outcome::Exited(1), t0 + n * 301 * SECOND);
        }
        assert!(!status.borrow().crash_loop);
        assert_eq!(status.borrow().restarts, 5);
    }

    #[test]
    fn a_stable_ready_period_resets_the_backoff_and_ends_a_crash_loop() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        for n in 0..3 {
            supervisor.after(Outcome::Exited(1), t0 + n * SECOND);
        }
        assert!(status.borrow().crash_loop);
        assert_eq!(status.borrow().backoff_attempt, 3);

        let started = t0 + 10 * SECOND;
        let mut run = run(started);
        supervisor.observe(&mut run, Some(1), started);
        supervisor.observe(&mut run, Some(1), started + 119 * SECOND);
        assert!(!run.stable, "not yet the stable period");
        assert!(status.borrow().crash_loop);
        assert_eq!(status.borrow().backoff_attempt, 3);

        supervisor.observe(&mut run, Some(1), started + 120 * SECOND);
        assert!(run.stable);
        let s = status.borrow().clone();
        assert!(!s.crash_loop, "the crash loop is over");
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (0, None));

        // The next crash starts from the initial delay, and one crash is no loop.
        let wait = supervisor.after(Outcome::Exited(1), started + 121 * SECOND);
        assert!(wait <= SECOND);
        let s = status.borrow().clone();
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (1, Some(1_000)));
        assert!(!s.crash_loop);
    }

    #[test]
    fn a_ready_spell_shorter_than_the_stable_period_resets_nothing() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        supervisor.after(Outcome::Exited(1), t0);
        supervisor.after(Outcome::Exited(1), t0 + SECOND);
        let mut run = run(t0 + 2 * SECOND);
        supervisor.observe(&mut run, Some(1), t0 + 2 * SECOND);
        supervisor.observe(&mut run, None, t0 + 100 * SECOND);
        // Ready again, but the stable period counts from the new ready spell.
        supervisor.observe(&mut run, Some(1), t0 + 101 * SECOND);
        supervisor.observe(&mut run, Some(1), t0 + 200 * SECOND);
        assert!(!run.stable);
        supervisor.after(Outcome::Exited(1), t0 + 201 * SECOND);
        let s = status.borrow().clone();
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (3, Some(4_000)));
    }
}
