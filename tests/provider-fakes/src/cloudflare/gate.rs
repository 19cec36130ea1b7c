//! What every call goes through before and after its handler: the call count, bearer auth, the
//! token's request limit with its `Ratelimit`, `Ratelimit-Policy` and (on 429) `Retry-After`
//! headers, the injected faults, and the recording of answers. A fault never skips the count or
//! the limit: a failed call is still a call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::control::{Answer, CrashMode, Fault};
use super::envelope::ApiError;
use super::{Shared, lock};

/// The most answers kept, and the most bytes of their bodies: a long run keeps its latest.
const MAX_ANSWERS: usize = 20_000;
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The template under which calls to paths the fake does not serve are counted.
pub(crate) const UNMATCHED: &str = "<unmatched>";

pub(crate) struct FaultEntry {
    pub method: String,
    pub template: String,
    pub remaining: u32,
    pub fault: Fault,
}

/// Cloudflare's limit: `limit` requests in a window; going over blocks the token for a whole
/// window from then on ("all API calls for the next five minutes will be blocked").
pub(crate) struct Window {
    pub limit: u32,
    pub length: Duration,
    /// When the current window began (at its first request).
    pub start: Option<Instant>,
    pub used: u32,
    pub blocked_until: Option<Instant>,
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

    pub(crate) fn remaining(&mut self, now: Instant) -> u32 {
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

pub(crate) struct Gate {
    pub calls: BTreeMap<(String, String), u64>,
    pub total: u64,
    /// Calls refused because the limit was spent.
    pub rate_limited: u64,
    pub faults: Vec<FaultEntry>,
    pub window: Window,
    pub answers: VecDeque<Answer>,
    answer_bytes: usize,
    pub record: bool,
    ray: u64,
}

impl Gate {
    pub(crate) fn new(limit: u32, length: Duration, record: bool) -> Gate {
        Gate {
            calls: BTreeMap::new(),
            total: 0,
            rate_limited: 0,
            faults: Vec::new(),
            window: Window {
                limit,
                length,
                start: None,
                used: 0,
                blocked_until: None,
            },
            answers: VecDeque::new(),
            answer_bytes: 0,
            record,
            ray: 0,
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
        .is_some_and(|given| given.trim() == token)
}

/// What the limit said about one call.
struct Budget {
    /// `Err(wait)` when refused.
    verdict: Result<(), Duration>,
    limit: u32,
    remaining: u32,
    reset_in: Duration,
    window: Duration,
}

/// Counts the call, spends the limit and picks the fault, all under one lock.
fn admit(
    shared: &Shared,
    method: &str,
    template: &str,
    authorized: bool,
) -> (Budget, Option<Fault>, u64) {
    let now = Instant::now();
    let mut gate = lock(&shared.gate);
    *gate
        .calls
        .entry((method.to_owned(), template.to_owned()))
        .or_default() += 1;
    gate.total += 1;
    gate.ray += 1;
    // A call without the token is nobody's: it spends no token's limit.
    let verdict = if authorized {
        gate.window.take(now)
    } else {
        Ok(())
    };
    if verdict.is_err() {
        gate.rate_limited += 1;
    }
    let budget = Budget {
        verdict,
        limit: gate.window.limit,
        remaining: gate.window.remaining(now),
        reset_in: gate.window.reset_in(now),
        window: gate.window.length,
    };
    let fault = if authorized && budget.verdict.is_ok() {
        gate.take_fault(method, template)
    } else {
        None
    };
    (budget, fault, gate.ray)
}

fn refusal(authorized: bool, budget: &Budget) -> Option<ApiError> {
    if !authorized {
        Some(ApiError::unauthorized())
    } else if budget.verdict.is_err() {
        Some(ApiError::rate_limited(
            budget.limit,
            budget.window.as_secs(),
        ))
    } else {
        None
    }
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
    let (budget, fault, ray) = admit(&shared, &method, &template, authorized);
    let injected = fault.is_some();
    let mut response = if let Some(refused) = refusal(authorized, &budget) {
        refused.into_response()
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
                ApiError::new(status, code, message).into_response()
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
    add_headers(&mut response, &budget, ray);
    if !lock(&shared.gate).record {
        return response;
    }
    let (parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    if matches!(
        parts.extensions.get::<CrashMarker>().map(|m| m.0),
        Some(CrashMode::DropConnection)
    ) {
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

/// Marks a crash answer whose body must not be read (reading it would end it early).
#[derive(Clone, Copy)]
struct CrashMarker(CrashMode);

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

/// Any path the fake does not serve: counted and charged like any call, then Cloudflare's
/// "no route" envelope.
pub(crate) async fn unknown_route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let authorized = authorized(request.headers(), &shared.token);
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let (budget, _, ray) = admit(&shared, &method, UNMATCHED, authorized);
    let mut response = refusal(authorized, &budget)
        .unwrap_or_else(|| ApiError::no_route(path.strip_prefix(super::PREFIX).unwrap_or(&path)))
        .into_response();
    add_headers(&mut response, &budget, ray);
    if !lock(&shared.gate).record {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    record(
        &shared,
        Answer {
            method,
            template: UNMATCHED.to_owned(),
            path,
            status: parts.status.as_u16(),
            body: bytes.to_vec(),
            injected: false,
        },
    );
    Response::from_parts(parts, Body::from(bytes))
}
