//! The provider's request budget as its answers report it (`RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset`: Hetzner's headers), shared by every clone of one
//! client, so that a process that owns the budget never sends a call it knows the budget cannot
//! cover.
//!
//! Once an answer says no request is left, calls go out one at a time, spaced by the time the
//! provider takes to give one request back (the time to a full budget, over the limit). Every
//! caller takes the next slot in turn, so callers waiting together do not wake together and
//! meet a 429 each. An answer with requests left ends the spacing. Another process spending the
//! same budget (a second replica, an operator's script) can still meet a 429; the client then
//! waits as the provider asked, as before.
//!
//! This never sleeps and never calls out: it says how long the caller should wait.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::sync::lock;

/// What the latest answers said about the budget.
#[derive(Debug, Default)]
pub(super) struct Budget {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `RateLimit-Limit` of the latest answer that carried one (0: none seen yet).
    limit: u32,
    /// While the budget is spent: when the next call may go out, and the time the provider
    /// takes to give one request back. Monotonic time: the waits are slept, not recorded.
    next: Option<Instant>,
    spacing: Duration,
}

/// The budget headers of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reported {
    pub(super) limit: Option<u32>,
    pub(super) remaining: Option<u32>,
    /// Unix seconds at which the budget is full again.
    pub(super) reset_s: Option<i64>,
}

impl Reported {
    pub(super) fn read(headers: &HeaderMap) -> Self {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        Self {
            limit: number("ratelimit-limit").and_then(|n| u32::try_from(n).ok()),
            remaining: number("ratelimit-remaining").and_then(|n| u32::try_from(n).ok()),
            reset_s: number("ratelimit-reset"),
        }
    }

    /// How long the provider takes to give one request back, read from a spent budget at
    /// `now_ms` (unix milliseconds): the time to a full budget over its size. `RateLimit-Reset`
    /// is in whole seconds, so a second is added: the spacing errs long, never short.
    pub(super) fn spacing(&self, now_ms: i64) -> Option<Duration> {
        let (limit, reset_s) = (self.limit.filter(|l| *l > 0)?, self.reset_s?);
        let to_full_ms = reset_s
            .saturating_mul(1_000)
            .saturating_add(1_000)
            .saturating_sub(now_ms)
            .max(1);
        let spacing = u64::try_from(to_full_ms).ok()?.div_ceil(u64::from(limit));
        Some(Duration::from_millis(spacing.max(1)))
    }
}

impl Budget {
    /// Notes what an answer said: received at `now` (monotonic), `now_ms` (unix milliseconds).
    pub(super) fn observe(&self, reported: Reported, now: Instant, now_ms: i64) {
        let mut state = lock(&self.state);
        if let Some(limit) = reported.limit {
            state.limit = limit;
        }
        match reported.remaining {
            Some(0) => {
                let Some(spacing) = reported.spacing(now_ms) else {
                    return;
                };
                state.spacing = spacing;
                let earliest = now + spacing;
                state.next = Some(state.next.map_or(earliest, |next| next.max(earliest)));
            }
            Some(_) => {
                state.next = None;
                state.spacing = Duration::ZERO;
            }
            None => {}
        }
    }

    /// How long a call about to go out at `now` should wait first (zero while requests are
    /// left). Taking the slot is a promise to use it: the next caller gets the one after.
    pub(super) fn take_slot(&self, now: Instant) -> Duration {
        let mut state = lock(&self.state);
        let spacing = state.spacing;
        match state.next {
            None => Duration::ZERO,
            Some(next) if next <= now => {
                // The spacing holds until an answer says requests are left again.
                state.next = Some(now + spacing);
                Duration::ZERO
            }
            Some(next) => {
                state.next = Some(next + spacing);
                next - now
            }
        }
    }

    /// Gives back a slot taken but not used (the wait was longer than the caller may sleep).
    pub(super) fn return_slot(&self) {
        let mut state = lock(&self.state);
        let spacing = state.spacing;
        if let Some(next) = state.next.as_mut() {
            *next -= spacing;
        }
    }

    /// The size of the budget the provider reported last, if it did.
    pub(super) fn limit(&self) -> Option<u32> {
        Some(lock(&self.state).limit).filter(|l| *l > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_795_000_000_000;

    fn spent(limit: u32, reset_in_s: i64) -> Reported {
        Reported {
            limit: Some(limit),
            remaining: Some(0),
            reset_s: Some(NOW_MS / 1_000 + reset_in_s),
        }
    }

    #[test]
    fn calls_go_out_one_spacing_apart_once_the_budget_is_spent() {
        let budget = Budget::default();
        let now = Instant::now();
        assert_eq!(budget.take_slot(now), Duration::ZERO);
        // Hetzner: 3600 an hour, all spent: one back a second (and a bit, Reset being whole).
        budget.observe(spent(3_600, 3_600), now, NOW_MS);
        assert_eq!(budget.limit(), Some(3_600));
        let spacing = Duration::from_millis(1_001);
        assert_eq!(budget.take_slot(now), spacing);
        assert_eq!(
            budget.take_slot(now),
            spacing * 2,
            "the next caller waits its turn"
        );
        budget.return_slot();
        assert_eq!(
            budget.take_slot(now),
            spacing * 2,
            "a returned slot is given again"
        );
        // Requests left again: no wait.
        budget.observe(
            Reported {
                limit: Some(3_600),
                remaining: Some(5),
                reset_s: None,
            },
            now,
            NOW_MS,
        );
        assert_eq!(budget.take_slot(now), Duration::ZERO);
    }

    #[test]
    fn a_late_caller_keeps_the_spacing_until_requests_are_left() {
        let budget = Budget::default();
        let now = Instant::now();
        budget.observe(spent(100, 10), now, NOW_MS);
        let spacing = budget.take_slot(now);
        assert_eq!(spacing, Duration::from_millis(110));
        // Long after the slot: go at once, but the one after still waits a spacing.
        let later = now + Duration::from_secs(5);
        assert_eq!(budget.take_slot(later), Duration::ZERO);
        assert_eq!(budget.take_slot(later), spacing);
    }

    #[test]
    fn the_headers_are_read_and_missing_ones_change_nothing() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-limit", "3600".parse().unwrap());
        headers.insert("ratelimit-remaining", "0".parse().unwrap());
        headers.insert("ratelimit-reset", "1795000060".parse().unwrap());
        assert_eq!(Reported::read(&headers), spent(3_600, 60));
        let budget = Budget::default();
        let now = Instant::now();
        budget.observe(Reported::read(&HeaderMap::new()), now, NOW_MS);
        assert_eq!(
            (budget.limit(), budget.take_slot(now)),
            (None, Duration::ZERO)
        );
        // Spent without a limit: how fast it refills is unknown, so no spacing is invented.
        let unsized_budget = Reported {
            limit: None,
            ..spent(3_600, 60)
        };
        budget.observe(unsized_budget, now, NOW_MS);
        assert_eq!(budget.take_slot(now), Duration::ZERO);
    }
}
