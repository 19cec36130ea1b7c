//! What the Fly fake's handlers and control handle share, and what its gate does Fly's way:
//! the token (`Authorization: Bearer …` or `FlyV1 …`), Fly's error body `{"error": "…",
//! "status": "…"}`, a `fly-request-id` on every answer, and an optional token bucket standing
//! for Fly's per-action limits (off unless asked for). The gate itself is
//! [`crate::common::gate`].

use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;

use super::state::State;
use super::{ROUTES, lock};
use crate::common::gate::{Gate, Provider};

/// What the handlers and the control handle share.
pub struct Shared {
    pub(crate) token: String,
    pub(crate) org_slug: String,
    pub(crate) state: Mutex<State>,
    pub(crate) gate: Mutex<Gate<String, Bucket>>,
}

impl Shared {
    /// Runs `f` on the organization with every due transition settled first.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut state = lock(&self.state);
        state.settle(now);
        f(&mut state, now)
    }
}

/// A refusal in Fly's shape: `{"error": message}` and, when Fly classifies it, `"status"`
/// (`insufficient_capacity`, `name_taken`, …).
#[derive(Debug)]
pub(crate) struct FlyError {
    pub status: StatusCode,
    pub message: String,
    pub code: Option<String>,
}

impl FlyError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> FlyError {
        FlyError {
            status,
            message: message.into(),
            code: None,
        }
    }

    #[must_use]
    pub(crate) fn code(mut self, code: &str) -> FlyError {
        self.code = Some(code.to_owned());
        self
    }

    pub(crate) fn app_not_found() -> FlyError {
        FlyError::new(StatusCode::NOT_FOUND, "app not found")
    }

    pub(crate) fn machine_not_found() -> FlyError {
        FlyError::new(StatusCode::NOT_FOUND, "machine not found")
    }

    pub(crate) fn volume_not_found() -> FlyError {
        FlyError::new(StatusCode::NOT_FOUND, "volume not found")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> FlyError {
        FlyError::new(StatusCode::BAD_REQUEST, message)
    }

    /// What Fly answers an operation the machine's state does not allow.
    pub(crate) fn precondition(message: impl Into<String>) -> FlyError {
        FlyError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("failed_precondition: {}", message.into()),
        )
    }
}

impl IntoResponse for FlyError {
    fn into_response(self) -> Response {
        let body = match self.code {
            Some(code) if !code.is_empty() => json!({"error": self.message, "status": code}),
            _ => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`. `None` in the gate's
/// limiter means no limit.
pub struct Bucket {
    pub(crate) limit: Option<(f64, f64)>,
    pub(crate) tokens: f64,
    pub(crate) at: Option<Instant>,
}

impl Bucket {
    pub(crate) fn new(limit: Option<(u32, u32)>) -> Bucket {
        let limit = limit.map(|(rate, burst)| (f64::from(rate.max(1)), f64::from(burst.max(1))));
        Bucket {
            tokens: limit.map_or(0.0, |(_, burst)| burst),
            limit,
            at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some((rate, burst)) = self.limit else {
            return;
        };
        if let Some(at) = self.at {
            let gained = now.saturating_duration_since(at).as_secs_f64() * rate;
            self.tokens = (self.tokens + gained).min(burst);
        }
        self.at = Some(now);
    }

    /// Takes one request; `Err(wait)` until a token is back.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let Some((rate, _)) = self.limit else {
            return Ok(());
        };
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn remaining(&mut self, now: Instant) -> u32 {
        self.refill(now);
        match self.limit {
            None => u32::MAX,
            // Whole tokens, never more than the burst: the cast cannot truncate a real value.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a count of whole tokens between 0 and the burst"
            )]
            Some(_) => self.tokens.floor() as u32,
        }
    }
}

/// What the bucket said about one call: `Err(wait)` when refused.
pub struct Budget(Result<(), Duration>);

impl Provider for Shared {
    const NAME: &'static str = "Fly";
    const ROUTES: &'static [(&'static str, &'static str)] = ROUTES;
    const RECORD_UNMATCHED: bool = true;
    type Code = String;
    type Limiter = Bucket;
    type Budget = Budget;
    type Context = ();

    fn gate(&self) -> &Mutex<Gate<String, Bucket>> {
        &self.gate
    }

    /// Fly's API takes its tokens as `Bearer …` (an API token) or `FlyV1 …` (a macaroon, as
    /// flyctl sends it).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("FlyV1 "))
            })
            .is_some_and(|given| given.trim() == self.token)
    }

    fn context(&self) {}

    fn spend(bucket: &mut Bucket, now: Instant, authorized: bool, (): ()) -> Budget {
        Budget(if authorized { bucket.take(now) } else { Ok(()) })
    }

    fn allowed(budget: &Budget) -> bool {
        budget.0.is_ok()
    }

    fn remaining(bucket: &mut Bucket, now: Instant) -> u32 {
        bucket.remaining(now)
    }

    fn unauthorized() -> Response {
        FlyError::new(StatusCode::UNAUTHORIZED, "unauthorized").into_response()
    }

    fn rate_limited(_budget: &Budget) -> Response {
        FlyError::new(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded").into_response()
    }

    fn error(status: StatusCode, code: String, message: String) -> Response {
        FlyError {
            status,
            message,
            code: Some(code),
        }
        .into_response()
    }

    fn not_found(_path: &str) -> Response {
        FlyError::new(StatusCode::NOT_FOUND, "404 page not found").into_response()
    }

    fn add_headers(response: &mut Response, budget: &Budget, seq: u64) {
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&format!("01J{seq:023X}-fra")) {
            headers.insert("fly-request-id", id);
        }
        if let Err(wait) = budget.0 {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                headers.insert("retry-after", v);
            }
        }
    }
}
