//! What the Hetzner fake's handlers and control handle share, and what its gate does Hetzner's
//! way: the hourly request budget with its `RateLimit-*` headers, the error envelope of
//! refusals and injected errors, and the 404 of paths it does not serve. The gate itself is
//! [`crate::common::gate`].

use std::sync::Mutex;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::error::ApiError;
use super::state::State;
use super::{ROUTES, lock};
use crate::common::gate::{self, Gate, Provider};

/// What the handlers and the control handle share.
pub struct Shared {
    pub(crate) token: String,
    pub(crate) state: Mutex<State>,
    pub(crate) gate: Mutex<Gate<String, Bucket>>,
}

impl Shared {
    /// Runs `f` on the project's state after finishing the actions that are due.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.advance(now);
        f(&mut state, now)
    }
}

/// A token bucket: `limit` tokens, refilled continuously.
pub struct Bucket {
    pub(crate) limit: u32,
    pub(crate) refill_per_second: f64,
    pub(crate) tokens: f64,
    pub(crate) at: Instant,
}

impl Bucket {
    pub(crate) fn new(limit: u32, refill_per_second: f64) -> Bucket {
        Bucket {
            limit,
            refill_per_second,
            tokens: f64::from(limit),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(f64::from(self.limit));
        self.at = now;
    }

    /// Takes one request from the budget; false when it is spent.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn remaining(&mut self, now: Instant) -> u32 {
        self.refill(now);
        // The bucket holds at most `limit` (a u32), so the floor fits.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 <= tokens <= limit"
        )]
        let remaining = self.tokens.floor() as u32;
        remaining
    }

    /// Seconds until the bucket is full again.
    fn seconds_to_full(&self) -> u64 {
        if self.refill_per_second <= 0.0 {
            return 0;
        }
        let missing = f64::from(self.limit) - self.tokens;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "non-negative, bounded by limit / rate"
        )]
        let secs = (missing / self.refill_per_second).ceil().max(0.0) as u64;
        secs
    }
}

/// What the budget said about one call.
pub struct Budget {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset: u64,
}

impl Provider for Shared {
    const NAME: &'static str = "Hetzner";
    const ROUTES: &'static [(&'static str, &'static str)] = ROUTES;
    const RECORD_UNMATCHED: bool = false;
    type Code = String;
    type Limiter = Bucket;
    type Budget = Budget;
    /// The fake's wall clock, in unix seconds (`RateLimit-Reset` is a point in time).
    type Context = u64;

    fn gate(&self) -> &Mutex<Gate<String, Bucket>> {
        &self.gate
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        gate::bearer(headers).is_some_and(|given| given == self.token)
    }

    fn context(&self) -> u64 {
        let unix_now = self.with(|state, now| state.clock.wall(now).unix_timestamp());
        u64::try_from(unix_now).unwrap_or(0)
    }

    fn spend(bucket: &mut Bucket, now: Instant, authorized: bool, unix_now: u64) -> Budget {
        // Unauthenticated calls belong to no project, so they spend no project's budget.
        let allowed = !authorized || bucket.take(now);
        let remaining = bucket.remaining(now);
        Budget {
            allowed,
            limit: bucket.limit,
            remaining,
            reset: unix_now + bucket.seconds_to_full(),
        }
    }

    fn allowed(budget: &Budget) -> bool {
        budget.allowed
    }

    fn remaining(bucket: &mut Bucket, now: Instant) -> u32 {
        bucket.remaining(now)
    }

    fn unauthorized() -> Response {
        ApiError::unauthorized().into_response()
    }

    fn rate_limited(_: &Budget) -> Response {
        ApiError::rate_limited().into_response()
    }

    fn error(status: StatusCode, code: String, message: String) -> Response {
        ApiError::new(status, &code, message).into_response()
    }

    fn not_found(_: &str) -> Response {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the requested resource was not found",
        )
        .into_response()
    }

    fn add_headers(response: &mut Response, budget: &Budget, correlation: u64) {
        let headers = response.headers_mut();
        for (name, value) in [
            ("ratelimit-limit", budget.limit.to_string()),
            ("ratelimit-remaining", budget.remaining.to_string()),
            ("ratelimit-reset", budget.reset.to_string()),
            ("x-correlation-id", format!("{correlation:016x}")),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
}
