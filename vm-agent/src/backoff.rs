//! When to start cloudflared again: exponential backoff with full jitter, a cap, a reset only
//! after a stable ready period, and crash-loop detection over a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart policy's memory.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Restarts since the last stable period.
    attempt: u32,
    window: Duration,
    crash_loop_restarts: u32,
    recent: VecDeque<Instant>,
}

/// The next wait: the ceiling it was drawn under and the draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    pub attempt: u32,
    pub ceiling: Duration,
    pub wait: Duration,
}

impl Backoff {
    pub fn new(
        initial: Duration,
        max: Duration,
        crash_loop_restarts: u32,
        window: Duration,
    ) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
            window,
            crash_loop_restarts,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now` and draws the wait before it: uniformly from zero to
    /// `initial · 2^attempt`, capped at `max` ("full jitter").
    pub fn next(&mut self, now: Instant) -> Delay {
        self.recent.push_back(now);
        self.forget_before(now);
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let wait = Duration::from_millis(fastrand::u64(
            0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX),
        ));
        Delay {
            attempt: self.attempt,
            ceiling,
            wait,
        }
    }

    /// The ceiling of the next draw.
    pub fn ceiling(&self) -> Duration {
        let factor = 1_u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// cloudflared was ready for the whole stable period: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.recent.clear();
    }

    /// Whether the restarts within the window reach the crash-loop threshold.
    pub fn crash_loop(&mut self, now: Instant) -> bool {
        self.forget_before(now);
        self.recent.len() >= usize::try_from(self.crash_loop_restarts).unwrap_or(usize::MAX)
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|first| now.saturating_duration_since(*first) > self.window)
        {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_draws_stay_under_them() {
        let now = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            100,
            Duration::from_mins(1),
        );
        let ceilings: Vec<u64> = (0..7)
            .map(|_| {
                let delay = backoff.next(now);
                assert!(delay.wait <= delay.ceiling);
                u64::try_from(delay.ceiling.as_millis()).unwrap()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000, 1_000]);
        backoff.reset();
        assert_eq!(backoff.next(now).ceiling, Duration::from_millis(100));
    }

    #[test]
    fn a_crash_loop_is_too_many_restarts_within_the_window() {
        let start = Instant::now();
        let mut backoff = Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            3,
            Duration::from_secs(10),
        );
        backoff.next(start);
        backoff.next(start + Duration::from_secs(1));
        assert!(!backoff.crash_loop(start + Duration::from_secs(1)));
        backoff.next(start + Duration::from_secs(2));
        assert!(backoff.crash_loop(start + Duration::from_secs(2)));
        assert!(
            !backoff.crash_loop(start + Duration::from_secs(12)),
            "old restarts age out"
        );
    }
}
