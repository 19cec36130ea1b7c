//! The one HTTP client every cloud's API client shares: JSON over reqwest (rustls), a bearer
//! token, a timeout per attempt, and retries. What a failed answer means is each provider's to
//! say (it reads its own error envelope: a [`Classify`]); when to try again is decided here,
//! the same way for every cloud:
//!
//! - only a failure the provider calls transient or rate limited is tried again; a permanent
//!   one, a "not found" or a conflict goes back to the caller at once;
//! - a request that may have been carried out is repeated only if repeating it is harmless
//!   (GET, PUT, DELETE). A POST is repeated only when it certainly was not carried out: a 429
//!   or 423 (refused before acting) or a connection that never opened. A job step repeats a
//!   POST itself, after looking up by label what the first one may have made;
//! - the wait is what the provider asked for (`Retry-After`, or Hetzner's `RateLimit-Reset`)
//!   when it said, else jittered exponential backoff ([`crate::backoff`]). A wait longer than
//!   the policy allows is not slept here: the error goes back with its `retry_after`, and the
//!   job runner schedules the next attempt;
//! - once an answer says the budget is spent (`RateLimit-Remaining: 0`), calls wait their turn,
//!   one per request the provider gives back ([`budget`]), rather than meet a 429 each.
//!
//! Tokens never reach a log line or an error message; paths and the provider's request id do.

mod budget;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{ErrorKind, ProviderError, Secret};
use crate::backoff::{jitter, retry_delay};
use crate::clock::SharedClock;

/// How hard one call tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first backoff ceiling; it doubles per attempt.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub cap: Duration,
    /// The longest wait slept here; a provider asking for more gets its answer to the caller.
    pub max_wait: Duration,
    /// How long one attempt may take, connection and body included.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// What the official Hetzner clients do: from 1 s, doubling, capped at 60 s, with jitter.
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_mins(1),
            max_wait: Duration::from_mins(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Turns a provider's answer that is not a success (status, headers, body) into an error: the
/// provider's code and message from its envelope, and the kind that decides what happens next.
/// [`classify_status`] is the fallback for an answer without an envelope.
pub type Classify = fn(StatusCode, &HeaderMap, &[u8]) -> ProviderError;

/// The kind of failure an HTTP status means when the provider says nothing more.
pub fn status_kind(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        429 => ErrorKind::RateLimited,
        // Locked by another action, or the provider failing for now.
        408 | 423 | 500 | 502..=504 => ErrorKind::Transient,
        404 | 410 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        _ => ErrorKind::Permanent,
    }
}

/// A [`Classify`] for answers whose body says nothing we understand.
pub fn classify_status(status: StatusCode, _headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(200).collect();
    let message = if excerpt.is_empty() {
        format!("the provider answered {status}")
    } else {
        format!("the provider answered {status}: {excerpt}")
    };
    ProviderError::new(status_kind(status), message)
}

/// A successful answer.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as `T`; an answer we cannot read is the provider's fault, and permanent.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::permanent(format!("the provider's answer is unreadable: {e}"))
        })
    }
}

/// Checks a client made that passed (of credentials, of a catalogue), by what was checked,
/// with the instant (ms) until which each is trusted; shared by every clone of the client.
#[derive(Clone, Debug, Default)]
pub struct Passed(Arc<std::sync::Mutex<std::collections::BTreeMap<String, i64>>>);

impl Passed {
    /// Whether the check of `what` passed and is still trusted at `now`.
    pub fn holds(&self, what: &str, now: i64) -> bool {
        crate::sync::lock(&self.0)
            .get(what)
            .is_some_and(|until| *until > now)
    }

    /// The check of `what` passed: trust it until `until`.
    pub fn remember(&self, what: String, until: i64) {
        crate::sync::lock(&self.0).insert(what, until);
    }
}

/// A client of one provider's API.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// The provider's name, for logs.
    provider: &'static str,
    base: String,
    token: Secret,
    policy: RetryPolicy,
    classify: Classify,
    clock: SharedClock,
    /// What the provider's answers said about its request budget, shared by every clone.
    budget: Arc<budget::Budget>,
}

impl Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("provider", &self.provider)
            .field("base", &self.base)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Response),
    /// Failed; `sent` says whether the provider may have acted on it.
    Failed {
        error: ProviderError,
        sent: bool,
    },
}

impl ApiClient {
    /// A client of the API at `base` (such as `https://api.hetzner.cloud/v1`; tests give a
    /// loopback URL) that authenticates with `token`.
    pub fn new(
        provider: &'static str,
        base: &str,
        token: Secret,
        policy: RetryPolicy,
        classify: Classify,
        clock: SharedClock,
    ) -> Result<Self, ProviderError> {
        // reqwest is built without a crypto provider of its own; this process uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("control/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ProviderError::permanent(format!("cannot build the {provider} client: {e}"))
            })?;
        Ok(Self {
            http,
            provider,
            base: base.trim_end_matches('/').to_owned(),
            token,
            policy,
            classify,
            clock,
            budget: Arc::default(),
        })
    }

    /// The clock the client times its retries and waits by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The size of the request budget the provider reported last (Hetzner's `RateLimit-Limit`:
    /// requests an hour), if it did.
    pub fn reported_limit(&self) -> Option<u32> {
        self.budget.limit()
    }

    /// Sends `method path` with an optional JSON body, trying again as the module says.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ProviderError> {
        let repeatable = matches!(method, Method::GET | Method::PUT | Method::DELETE);
        let mut attempt = 1;
        loop {
            let turn = self.budget.take_slot(tokio::time::Instant::now());
            if turn > self.policy.max_wait {
                self.budget.return_slot();
                return Err(ProviderError::rate_limited(
                    format!(
                        "{} {method} {path}: the request budget is spent; not sent",
                        self.provider
                    ),
                    Some(turn),
                )
                .with_code("rate_limit_exceeded"));
            }
            if !turn.is_zero() {
                tokio::time::sleep(turn).await;
            }
            let (error, sent) = match self.attempt(&method, path, body).await {
                Attempt::Done(response) => return Ok(response),
                Attempt::Failed { error, sent } => (error, sent),
            };
            let refused = matches!(error.kind, ErrorKind::RateLimited)
                || error.code.as_deref() == Some("locked");
            let may_repeat = repeatable || !sent || refused;
            if !error.is_retryable() || !may_repeat || attempt >= self.policy.attempts {
                return Err(error);
            }
            let wait = retry_delay(
                self.policy.base,
                self.policy.cap,
                i64::from(attempt),
                error.retry_after,
                jitter(),
            );
            if wait > self.policy.max_wait {
                return Err(error);
            }
            info!(
                provider = self.provider,
                %method,
                path,
                attempt,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "provider call failed; trying again"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// `GET path`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ProviderError> {
        self.call(Method::GET, path, None).await?.json()
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Attempt {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token.0));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                // Only a connection that never opened certainly carried nothing.
                let sent = !e.is_connect();
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "failed"
                };
                let error = ProviderError::transient(format!(
                    "{} {method} {path}: {what}: {}",
                    self.provider,
                    e.without_url()
                ));
                return Attempt::Failed { error, sent };
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        self.budget.observe(
            budget::Reported::read(&headers),
            tokio::time::Instant::now(),
            self.clock.now().as_millis(),
        );
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => {
                let error = ProviderError::transient(format!(
                    "{} {method} {path}: the answer broke off: {}",
                    self.provider,
                    e.without_url()
                ));
                return Attempt::Failed { error, sent: true };
            }
        };
        if status.is_success() {
            return Attempt::Done(Response {
                status,
                headers,
                body,
            });
        }
        let mut error = (self.classify)(status, &headers, &body);
        if error.retry_after.is_none() {
            error.retry_after = self.asked_wait(&headers);
        }
        if !error.is_retryable() {
            warn!(
                provider = self.provider,
                %method,
                path,
                status = status.as_u16(),
                request_id = provider_request_id(&headers),
                error = %error,
                "provider refused a call"
            );
        }
        Attempt::Failed { error, sent: true }
    }

    /// How long the provider asked us to wait: `Retry-After` (seconds or an HTTP date), else,
    /// when the request budget is spent, until `RateLimit-Reset` (unix seconds).
    fn asked_wait(&self, headers: &HeaderMap) -> Option<Duration> {
        let now_ms = self.clock.now().as_millis();
        let text = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        if let Some(value) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
            return retry_after(value.trim(), now_ms);
        }
        if text("ratelimit-remaining") == Some("0") {
            // With the budget's size known, one request is back after a spacing; without it,
            // only a full budget at Reset is certain.
            let reported = budget::Reported::read(headers);
            if let Some(spacing) = reported.spacing(now_ms) {
                return Some(spacing);
            }
            let reset_s: i64 = text("ratelimit-reset")?.parse().ok()?;
            let wait_ms = reset_s.saturating_mul(1_000).saturating_sub(now_ms).max(0);
            return Some(Duration::from_millis(u64::try_from(wait_ms).ok()?));
        }
        None
    }
}

/// A `Retry-After` value: whole seconds, or an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Duration::from_millis(
        u64::try_from(at_ms.saturating_sub(now_ms).max(0)).ok()?,
    ))
}

/// The provider's id of a request, for support tickets: Hetzner's, Fly's or Cloudflare's.
fn provider_request_id(headers: &HeaderMap) -> Option<&str> {
    ["x-correlation-id", "fly-request-id", "cf-ray"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
}

#[cfg(test)]
mod tests;
