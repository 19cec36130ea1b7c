//! What the Cloudflare fake's handlers and control handle share, and what its gate does
//! Cloudflare's way: the token's request limit with its `Ratelimit`, `Ratelimit-Policy` and (on
//! 429) `Retry-After` headers, the v4 envelope of refusals and injected errors, and the "no
//! route" of paths it does not serve. The gate itself is [`crate::common::gate`].

use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::envelope::ApiError;
use super::state::State;
use super::{PREFIX, ROUTES, lock};
use crate::common::gate::{self, Gate, Provider};

/// What the handlers and the control handle share.
pub struct Shared {
    pub(crate) token: String,
    pub(crate) account_id: String,
    pub(crate) zone_id: String,
    pub(crate) zone_name: String,
    pub(crate) state: Mutex<State>,
    pub(crate) gate: Mutex<Gate<u32, Window>>,
}

impl Shared {
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = lock(&self.state);
        f(&mut state, now)
    }

    /// The account in the path must be the fake's: a token sees no other account.
    pub(crate) fn account(&self, account_id: &str, path: &str) -> Result<(), ApiError> {
        super::check_tag(account_id, &self.account_id, path)
    }

    /// The zone in the path must be the fake's.
    pub(crate) fn zone(&self, zone_id: &str, path: &str) -> Result<(), ApiError> {
        super::check_tag(zone_id, &self.zone_id, path)
    }
}

/// Cloudflare's limit: `limit` requests in a window; going over blocks the token for a whole
/// window from then on ("all API calls for the next five minutes will be blocked").
pub struct Window {
    pub(crate) limit: u32,
    pub(crate) length: Duration,
    /// When the current window began (at its first request).
    pub(crate) start: Option<Instant>,
    pub(crate) used: u32,
    pub(crate) blocked_until: Option<Instant>,
}

impl Window {
    fn roll(&mut self, now: Instant) {
        if self.blocked_until.is_some_and(|until| until <= now) {
            self.blocked_until = None;
            self.start = None;
        }
        if self.start.is_some_and(|s| now >= s + self.length) {
            self.start = None;
        }
        if self.start.is_none() && self.blocked_until.is_none() {
            self.used = 0;
        }
    }

    /// Takes one request; `Err(wait)` when the token is blocked.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.roll(now);
        if let Some(until) = self.blocked_until {
            return Err(until - now);
        }
        self.start.get_or_insert(now);
        if self.used >= self.limit {
            self.blocked_until = Some(now + self.length);
            return Err(self.length);
        }
        self.used += 1;
        Ok(())
    }

    fn remaining(&mut self, now: Instant) -> u32 {
        self.roll(now);
        if self.blocked_until.is_some() {
            0
        } else {
            self.limit.saturating_sub(self.used)
        }
    }

    /// Until the budget is full again: the end of the block, or of the current window.
    fn reset_in(&self, now: Instant) -> Duration {
        match (self.blocked_until, self.start) {
            (Some(until), _) => until.saturating_duration_since(now),
            (None, Some(start)) => (start + self.length).saturating_duration_since(now),
            (None, None) => Duration::ZERO,
        }
    }
}

impl Window {
    pub(crate) fn new(limit: u32, length: Duration) -> Window {
        Window {
            limit,
            length,
            start: None,
            used: 0,
            blocked_until: None,
        }
    }
}

/// What the limit said about one call.
pub struct Budget {
    /// `Err(wait)` when refused.
    verdict: Result<(), Duration>,
    limit: u32,
    remaining: u32,
    reset_in: Duration,
    window: Duration,
}

impl Provider for Shared {
    const NAME: &'static str = "Cloudflare";
    const ROUTES: &'static [(&'static str, &'static str)] = ROUTES;
    const RECORD_UNMATCHED: bool = true;
    type Code = u32;
    type Limiter = Window;
    type Budget = Budget;
    type Context = ();

    fn gate(&self) -> &Mutex<Gate<u32, Window>> {
        &self.gate
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        gate::bearer(headers).is_some_and(|given| given.trim() == self.token)
    }

    fn context(&self) {}

    fn spend(window: &mut Window, now: Instant, authorized: bool, (): ()) -> Budget {
        // A call without the token is nobody's: it spends no token's limit.
        let verdict = if authorized { window.take(now) } else { Ok(()) };
        Budget {
            verdict,
            limit: window.limit,
            remaining: window.remaining(now),
            reset_in: window.reset_in(now),
            window: window.length,
        }
    }

    fn allowed(budget: &Budget) -> bool {
        budget.verdict.is_ok()
    }

    fn remaining(window: &mut Window, now: Instant) -> u32 {
        window.remaining(now)
    }

    fn unauthorized() -> Response {
        ApiError::unauthorized().into_response()
    }

    fn rate_limited(budget: &Budget) -> Response {
        ApiError::rate_limited(budget.limit, budget.window.as_secs()).into_response()
    }

    fn error(status: StatusCode, code: u32, message: String) -> Response {
        ApiError::new(status, code, message).into_response()
    }

    fn not_found(path: &str) -> Response {
        ApiError::no_route(path.strip_prefix(PREFIX).unwrap_or(path)).into_response()
    }

    fn add_headers(response: &mut Response, budget: &Budget, ray: u64) {
        add_headers(response, budget, ray);
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Cloudflare's rate-limit headers (IETF draft form): `Ratelimit` and `Ratelimit-Policy` always,
/// `Retry-After` (seconds, rounded up) only on a 429 for the limit.
fn add_headers(response: &mut Response, budget: &Budget, ray: u64) {
    let headers = response.headers_mut();
    let mut set = vec![
        (
            "ratelimit",
            format!(
                "\"default\";r={};t={}",
                budget.remaining,
                ceil_secs(budget.reset_in)
            ),
        ),
        (
            "ratelimit-policy",
            format!(
                "\"default\";q={};w={}",
                budget.limit,
                budget.window.as_secs()
            ),
        ),
        ("cf-ray", format!("{ray:016x}-FRA")),
    ];
    if let Err(wait) = budget.verdict {
        set.push(("retry-after", ceil_secs(wait).max(1).to_string()));
    }
    for (name, value) in set {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}
