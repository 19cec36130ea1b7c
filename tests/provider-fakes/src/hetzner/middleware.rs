//! What every call goes through before and after its handler: the call count, bearer auth, the
//! hourly request budget with its `RateLimit-*` headers, the injected faults, and the recording of
//! answers. A fault must never skip the count or the budget: a failed call is still a call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::control::{Answer, CrashMode, Fault};
use super::error::ApiError;
use super::{Shared, lock};

/// The most answers kept, and the most bytes of their bodies: a long run keeps its latest.
const MAX_ANSWERS: usize = 20_000;
const MAX_ANSWER_BYTES: usize = 64 << 20;

pub(crate) struct FaultEntry {
    pub method: String,
    pub template: String,
    pub remaining: u32,
    pub fault: Fault,
}

/// A token bucket: `limit` tokens, refilled continuously.
pub(crate) struct Bucket {
    pub limit: u32,
    pub refill_per_second: f64,
    pub tokens: f64,
    pub at: Instant,
}

impl Bucket {
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

    pub(crate) fn remaining(&mut self, now: Instant) -> u32 {
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

pub(crate) struct Gate {
    pub calls: BTreeMap<(String, String), u64>,
    pub total: u64,
    /// Calls refused because the budget was spent.
    pub rate_limited: u64,
    pub faults: Vec<FaultEntry>,
    pub bucket: Bucket,
    pub answers: VecDeque<Answer>,
    answer_bytes: usize,
    pub record: bool,
    correlation: u64,
}

impl Gate {
    pub(crate) fn new(limit: u32, refill_per_second: f64, record: bool) -> Gate {
        Gate {
            calls: BTreeMap::new(),
            total: 0,
            rate_limited: 0,
            faults: Vec::new(),
            bucket: Bucket {
                limit,
                refill_per_second,
                tokens: f64::from(limit),
                at: Instant::now(),
            },
            answers: VecDeque::new(),
            answer_bytes: 0,
            record,
            correlation: 0,
        }
    }

    pub(crate) fn clear_answers(&mut self) {
        self.answers.clear();
        self.answer_bytes = 0;
    }

    fn take_fault(&mut self, method: &str, template: &str) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|f| f.method == method && f.template == template)?;
        let entry = &mut self.faults[i];
        let fault = entry.fault.clone();
        entry.remaining = entry.remaining.saturating_sub(1);
        if entry.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given == token)
}

/// What the budget said about one call.
struct Budget {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset: u64,
}

/// Counts the call, spends the budget and picks the fault, all under one lock.
fn admit(
    shared: &Shared,
    method: &str,
    template: &str,
    authorized: bool,
) -> (Budget, Option<Fault>, u64) {
    let unix_now = shared.with(|state, now| state.clock.wall(now).unix_timestamp());
    let unix_now = u64::try_from(unix_now).unwrap_or(0);
    let now = Instant::now();
    let mut gate = lock(&shared.gate);
    *gate
        .calls
        .entry((method.to_owned(), template.to_owned()))
        .or_default() += 1;
    gate.total += 1;
    gate.correlation += 1;
    // Unauthenticated calls belong to no project, so they spend no project's budget.
    let allowed = !authorized || gate.bucket.take(now);
    if !allowed {
        gate.rate_limited += 1;
    }
    let remaining = gate.bucket.remaining(now);
    let budget = Budget {
        allowed,
        limit: gate.bucket.limit,
        remaining,
        reset: unix_now + gate.bucket.seconds_to_full(),
    };
    let fault = if authorized && allowed {
        gate.take_fault(method, template)
    } else {
        None
    };
    (budget, fault, gate.correlation)
}

pub(crate) async fn gate(
    State(shared): State<Arc<Shared>>,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let template = matched.as_str().to_owned();
    let path = request.uri().path().to_owned();
    let authorized = authorized(request.headers(), &shared.token);
    let (budget, fault, correlation) = admit(&shared, &method, &template, authorized);
    let injected = fault.is_some();
    let mut response = if !authorized {
        ApiError::unauthorized().into_response()
    } else if !budget.allowed {
        ApiError::rate_limited().into_response()
    } else {
        match fault {
            None => next.run(request).await,
            Some(Fault::Error {
                status,
                code,
                message,
            }) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                ApiError::new(status, &code, message).into_response()
            }
            Some(Fault::Stall(delay)) => {
                tokio::time::sleep(delay).await;
                next.run(request).await
            }
            Some(Fault::StallAnswer(delay)) => {
                let response = next.run(request).await;
                tokio::time::sleep(delay).await;
                response
            }
            Some(Fault::Crash(mode)) => {
                // The call takes effect, then its answer is lost.
                let _ = next.run(request).await;
                crash_response(mode)
            }
        }
    };
    add_headers(&mut response, &budget, correlation);
    if !lock(&shared.gate).record {
        return response;
    }
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    if matches!(injected_crash(&parts), Some(CrashMode::DropConnection)) {
        record(
            &shared,
            Answer {
                method,
                template,
                path,
                status,
                body: Vec::new(),
                injected,
            },
        );
        return Response::from_parts(parts, body);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    record(
        &shared,
        Answer {
            method,
            template,
            path,
            status,
            body: bytes.to_vec(),
            injected,
        },
    );
    Response::from_parts(parts, Body::from(bytes))
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

/// Marks a crash answer whose body must not be read (reading it would end it early).
#[derive(Clone, Copy)]
struct CrashMarker(CrashMode);

fn injected_crash(parts: &axum::http::response::Parts) -> Option<CrashMode> {
    parts.extensions.get::<CrashMarker>().map(|m| m.0)
}

fn crash_response(mode: CrashMode) -> Response {
    let mut response = match mode {
        CrashMode::EmptyServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        CrashMode::DropConnection => {
            // A body that fails before its first byte makes the server abort the connection.
            let failing = futures_util::stream::once(async {
                Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("crash injected"))
            });
            Response::new(Body::from_stream(failing))
        }
    };
    response.extensions_mut().insert(CrashMarker(mode));
    response
}

fn record(shared: &Shared, answer: Answer) {
    let mut gate = lock(&shared.gate);
    gate.answer_bytes += answer.body.len();
    gate.answers.push_back(answer);
    while gate.answers.len() > MAX_ANSWERS || gate.answer_bytes > MAX_ANSWER_BYTES {
        let Some(old) = gate.answers.pop_front() else {
            break;
        };
        gate.answer_bytes -= old.body.len();
    }
}

/// The template under which calls to paths the fake does not serve are counted.
pub(crate) const UNMATCHED: &str = "<unmatched>";

/// Any path the fake does not serve: counted and charged like any call (at Hetzner a wrong path
/// spends budget too), then Hetzner's 404 envelope.
pub(crate) async fn unknown_route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let authorized = authorized(request.headers(), &shared.token);
    let (budget, _, correlation) = admit(&shared, request.method().as_str(), UNMATCHED, authorized);
    let mut response = if !authorized {
        ApiError::unauthorized()
    } else if !budget.allowed {
        ApiError::rate_limited()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the requested resource was not found",
        )
    }
    .into_response();
    add_headers(&mut response, &budget, correlation);
    response
}
