//! What every call goes through before and after its handler: the call count, the bearer
//! token, the provider's request limit and its headers, the injected faults, and the recording
//! of answers. A fault never skips the count or the limit: a failed call is still a call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

use super::faults::{CrashMode, Fault, Faults, crash_response, injected_crash};
use super::lock;

/// The most answers kept, and the most bytes of their bodies: a long run keeps its latest.
const MAX_ANSWERS: usize = 20_000;
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The template under which calls to paths the fake does not serve are counted.
pub(crate) const UNMATCHED: &str = "<unmatched>";

/// One answer the fake gave, for checking shapes after a test.
#[derive(Clone, Debug)]
pub struct Answer {
    pub method: String,
    /// The route's path template, e.g. `/v1/servers/{id}` or
    /// `/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}`.
    pub template: String,
    pub path: String,
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer came from an injected fault rather than from the API's logic.
    pub injected: bool,
}

/// What one provider does its own way; the rest of the gate is the same for all.
pub trait Provider: Send + Sync + 'static {
    /// The provider's name, for panics ("the Hetzner fake serves no route …").
    const NAME: &'static str;
    /// Every route the fake serves, as (method, path template).
    const ROUTES: &'static [(&'static str, &'static str)];
    /// Whether answers to paths the fake does not serve are recorded too.
    const RECORD_UNMATCHED: bool;
    /// The provider's error code, as an injected error carries it.
    type Code: Clone + Send + 'static;
    /// The request limit's state.
    type Limiter: Send + 'static;
    /// What the limit said about one call, for the refusal and the headers.
    type Budget: Send + 'static;
    /// What `spend` needs besides the limiter, read before the gate is locked.
    type Context;

    fn gate(&self) -> &Mutex<Gate<Self::Code, Self::Limiter>>;
    /// Whether the `Authorization` header carries the fake's token.
    fn authorized(&self, headers: &HeaderMap) -> bool;
    fn context(&self) -> Self::Context;
    /// Spends one request (none for a call without the token, which is nobody's) and says what
    /// the limit is now.
    fn spend(
        limiter: &mut Self::Limiter,
        now: Instant,
        authorized: bool,
        context: Self::Context,
    ) -> Self::Budget;
    fn allowed(budget: &Self::Budget) -> bool;
    /// Requests left now.
    fn remaining(limiter: &mut Self::Limiter, now: Instant) -> u32;
    fn unauthorized() -> Response;
    fn rate_limited(budget: &Self::Budget) -> Response;
    /// An error in the provider's envelope.
    fn error(status: StatusCode, code: Self::Code, message: String) -> Response;
    /// The answer to a path the fake does not serve.
    fn not_found(path: &str) -> Response;
    /// The limit's headers (and a request id) on every answer.
    fn add_headers(response: &mut Response, budget: &Self::Budget, seq: u64);
}

/// Calls, faults, the limit and the answers of one fake, under one lock.
pub struct Gate<C, L> {
    pub(crate) calls: BTreeMap<(String, String), u64>,
    pub(crate) total: u64,
    /// Calls refused because the limit was spent.
    pub(crate) rate_limited: u64,
    pub(crate) faults: Faults<C>,
    pub(crate) limiter: L,
    answers: VecDeque<Answer>,
    answer_bytes: usize,
    record: bool,
    /// Numbers the calls, for the request-id header.
    seq: u64,
}

impl<C: Clone, L> Gate<C, L> {
    pub(crate) fn new(limiter: L, record: bool) -> Gate<C, L> {
        Gate {
            calls: BTreeMap::new(),
            total: 0,
            rate_limited: 0,
            faults: Faults::new(),
            limiter,
            answers: VecDeque::new(),
            answer_bytes: 0,
            record,
            seq: 0,
        }
    }

    pub(crate) fn calls(&self, method: &str, template: &str) -> u64 {
        self.calls
            .get(&(method.to_owned(), template.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn reset_calls(&mut self) {
        self.calls.clear();
        self.total = 0;
        self.rate_limited = 0;
    }

    pub(crate) fn answers(&self) -> Vec<Answer> {
        self.answers.iter().cloned().collect()
    }

    pub(crate) fn clear_answers(&mut self) {
        self.answers.clear();
        self.answer_bytes = 0;
    }

    fn record(&mut self, answer: Answer) {
        self.answer_bytes += answer.body.len();
        self.answers.push_back(answer);
        while self.answers.len() > MAX_ANSWERS || self.answer_bytes > MAX_ANSWER_BYTES {
            let Some(old) = self.answers.pop_front() else {
                break;
            };
            self.answer_bytes -= old.body.len();
        }
    }
}

/// The bearer token of a request's `Authorization` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Counts the call, spends the limit and picks the fault, all under one lock.
fn admit<P: Provider>(
    shared: &P,
    method: &str,
    template: &str,
    authorized: bool,
) -> (P::Budget, Option<Fault<P::Code>>, u64) {
    let context = shared.context();
    let now = Instant::now();
    let mut gate = lock(shared.gate());
    *gate
        .calls
        .entry((method.to_owned(), template.to_owned()))
        .or_default() += 1;
    gate.total += 1;
    gate.seq += 1;
    let budget = P::spend(&mut gate.limiter, now, authorized, context);
    if !P::allowed(&budget) {
        gate.rate_limited += 1;
    }
    let fault = if authorized && P::allowed(&budget) {
        gate.faults.take(method, template)
    } else {
        None
    };
    (budget, fault, gate.seq)
}

/// The refusal of a call without the token or over the limit.
fn refusal<P: Provider>(authorized: bool, budget: &P::Budget) -> Option<Response> {
    if !authorized {
        Some(P::unauthorized())
    } else if !P::allowed(budget) {
        Some(P::rate_limited(budget))
    } else {
        None
    }
}

/// The middleware of every served route.
pub(crate) async fn gate<P: Provider>(
    State(shared): State<Arc<P>>,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let template = matched.as_str().to_owned();
    let path = request.uri().path().to_owned();
    let authorized = shared.authorized(request.headers());
    let (budget, fault, seq) = admit(&*shared, &method, &template, authorized);
    let injected = fault.is_some();
    let mut response = if let Some(refused) = refusal::<P>(authorized, &budget) {
        refused
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
                P::error(status, code, message)
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
    P::add_headers(&mut response, &budget, seq);
    recorded(&*shared, response, method, template, path, injected).await
}

/// Any path the fake does not serve: counted and charged like any call (a wrong path spends
/// budget too), then the provider's "not found".
pub(crate) async fn unknown_route<P: Provider>(
    State(shared): State<Arc<P>>,
    request: Request,
) -> Response {
    let authorized = shared.authorized(request.headers());
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let (budget, _, seq) = admit(&*shared, &method, UNMATCHED, authorized);
    let mut response = refusal::<P>(authorized, &budget).unwrap_or_else(|| P::not_found(&path));
    P::add_headers(&mut response, &budget, seq);
    if !P::RECORD_UNMATCHED {
        return response;
    }
    recorded(
        &*shared,
        response,
        method,
        UNMATCHED.to_owned(),
        path,
        false,
    )
    .await
}

/// Records the answer (when recording) and gives it on; a dropped connection is recorded with
/// no body, since reading it would end it early.
async fn recorded<P: Provider>(
    shared: &P,
    response: Response,
    method: String,
    template: String,
    path: String,
    injected: bool,
) -> Response {
    if !lock(shared.gate()).record {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut answer = Answer {
        method,
        template,
        path,
        status: parts.status.as_u16(),
        body: Vec::new(),
        injected,
    };
    if matches!(injected_crash(&parts), Some(CrashMode::DropConnection)) {
        lock(shared.gate()).record(answer);
        return Response::from_parts(parts, body);
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    answer.body = bytes.to_vec();
    lock(shared.gate()).record(answer);
    Response::from_parts(parts, Body::from(bytes))
}
