//! The Idempotency-Key layer for POST and DELETE.
//!
//! It claims the key (committed on its own, so a concurrent duplicate sees it), hands the
//! claim to the handler, whose service stores its answer in the same transaction as its effect,
//! and afterwards drops a claim the handler did not complete so a retry can run. A retry of a
//! completed request gets the stored answer with `Idempotent-Replayed: true`; a retry while
//! the first is running gets 409; the same key on a different request gets 422.

use std::time::Duration;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use control_api::problem::PROBLEM_JSON;
use sha2::{Digest, Sha256};
use tracing::error;

use super::error::ApiError;
use super::middleware::body;
use crate::app::App;
use crate::auth::Principal;
use crate::clock::millis;
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::store::{IdempotencyClaim, StoreError};

pub(super) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub(super) static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a claim holds while its request runs; after that a retry may take it over.
const CLAIM_TTL: Duration = Duration::from_mins(1);

/// Largest body a keyed request may have (the API's own limit is lower).
const BODY_LIMIT: usize = 1024 * 1024;

pub(super) async fn idempotency(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if method != Method::POST && method != Method::DELETE {
        return next.run(request).await;
    }
    let Some(raw_key) = request.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let Some(key) = raw_key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .map(str::to_owned)
    else {
        return ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters",
        )
        .into_response();
    };
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await;
    };
    let (mut parts, payload) = request.into_parts();
    let Ok(bytes) = to_bytes(payload, BODY_LIMIT).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        )
        .into_response();
    };
    let claimed = IdempotencyKey {
        scope: principal.idempotency_scope(),
        key,
        claim: crate::ids::new_id("claim"),
    };
    let fingerprint = request_hash(
        &method,
        parts.uri.path_and_query().map_or("", |p| p.as_str()),
        &bytes,
    );
    match claim(&app, &claimed, &fingerprint).await {
        Err(e) => ApiError::from(Error::Store(e)).into_response(),
        Ok(IdempotencyClaim::Completed { status, body }) => replay(status, body),
        Ok(IdempotencyClaim::InFlight) => ApiError::new(
            StatusCode::CONFLICT,
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        .into_response(),
        Ok(IdempotencyClaim::Mismatch) => ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key",
            "was already used for a different request",
        )
        .into_response(),
        Ok(IdempotencyClaim::Claimed) => {
            parts.extensions.insert(claimed.clone());
            let response = next.run(Request::from_parts(parts, body(bytes))).await;
            release(&app, &claimed, response.status()).await;
            response
        }
    }
}

/// What makes two requests "the same": method, path with query, and body.
fn request_hash(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str());
    hasher.update(b"\n");
    hasher.update(path_and_query);
    hasher.update(b"\n");
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Claims the key in a transaction of its own, so a concurrent duplicate sees the claim.
async fn claim(
    app: &App,
    key: &IdempotencyKey,
    fingerprint: &str,
) -> Result<IdempotencyClaim, StoreError> {
    let now = app.clock.now().as_millis();
    let ttl = millis(CLAIM_TTL);
    let mut tx = app.store.write().await?;
    let claim = tx
        .claim_idempotency_key(
            &key.scope,
            &key.key,
            fingerprint,
            &key.claim,
            now,
            now + ttl,
        )
        .await?;
    tx.commit().await?;
    Ok(claim)
}

/// The stored answer of the first request, marked as a replay.
fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        PROBLEM_JSON
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// Drops the claim if the handler left it without an answer (it failed, or, a bug, forgot).
async fn release(app: &App, key: &IdempotencyKey, status: StatusCode) {
    let released = async {
        let mut tx = app.store.write().await?;
        let released = tx
            .release_idempotency_key(&key.scope, &key.key, &key.claim)
            .await?;
        tx.commit().await?;
        Ok::<_, StoreError>(released)
    }
    .await;
    match released {
        Ok(true) if status.is_success() => error!(
            key = %key.key,
            "a keyed request succeeded without recording its answer; a retry will run it again"
        ),
        Err(e) => error!(
            error = %e,
            key = %key.key,
            "could not release an idempotency claim; retries wait for it to expire"
        ),
        _ => {}
    }
}
