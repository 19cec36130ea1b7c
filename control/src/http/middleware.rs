//! Layers every API request passes through: request ids, problem documents, authentication.

use axum::body::{Body, to_bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use control_api::problem::{PROBLEM_JSON, Problem};
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::{ApiError, problem, problem_response};
use super::extract::RequestId;
use crate::app::App;
use crate::auth;
use crate::error::Error;
use crate::ids::{new_id, prefix};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest problem body this layer rewrites (problem documents are small).
const PROBLEM_LIMIT: usize = 64 * 1024;

/// Gives every request an id of ours, runs it inside a span carrying that id, answers with it
/// in `X-Request-Id`, and logs the outcome. A caller's own `X-Request-Id` (if it is sane) is
/// kept beside ours as `caller_request_id`, never taken for ours: logs and audit events must
/// not carry an id a caller chose, nor two requests share one.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let caller = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let id = new_id(prefix::REQUEST);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = info_span!(
        "request",
        request_id = %id,
        caller_request_id = caller.as_deref().map(tracing::field::display),
    );
    request.extensions_mut().insert(RequestId {
        id: id.clone(),
        caller,
    });
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.in_scope(|| {
        // Agents report constantly: their successful calls are not worth a line each.
        let quiet = path.starts_with("/api/agent/") && status.is_success();
        if status.is_server_error() {
            warn!(%method, %path, status = status.as_u16(), "request failed");
        } else if !quiet && (method != axum::http::Method::GET || status.is_client_error()) {
            info!(%method, %path, status = status.as_u16(), "request handled");
        } else {
            debug!(%method, %path, status = status.as_u16(), "request handled");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// Makes every 4xx/5xx a problem document carrying the request id and path, whoever produced
/// it: our handlers, axum's own rejections (405, 413) or the fallback.
pub async fn problem_context(request: Request, next: Next) -> Response {
    let instance = request.uri().path().to_owned();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|r| r.id.clone());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, PROBLEM_LIMIT).await.unwrap_or_default();
    let mut document = is_problem
        .then(|| serde_json::from_slice::<Problem>(&bytes).ok())
        .flatten()
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            let detail = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text
            };
            problem(status, detail, Vec::new())
        });
    document.instance.get_or_insert(instance);
    document.request_id = request_id;
    let mut rewritten = problem_response(&document);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Answers 405, with `Allow`, a method the API document does not give the matched path, before
/// any other layer acts on the request (authentication, an Idempotency-Key's claim).
pub async fn documented_method(request: Request, next: Next) -> Response {
    let Some(path) = request.extensions().get::<MatchedPath>() else {
        return next.run(request).await;
    };
    let Some(item) = super::served_openapi().paths.paths.get(path.as_str()) else {
        return next.run(request).await;
    };
    let documented = [
        (Method::GET, item.get.is_some()),
        (Method::HEAD, item.get.is_some() || item.head.is_some()),
        (Method::POST, item.post.is_some()),
        (Method::PUT, item.put.is_some()),
        (Method::PATCH, item.patch.is_some()),
        (Method::DELETE, item.delete.is_some()),
    ];
    if documented
        .iter()
        .any(|(method, has)| *has && method == request.method())
    {
        return next.run(request).await;
    }
    let allow = documented
        .iter()
        .filter(|(_, has)| *has)
        .map(|(method, _)| method.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this path takes {allow}"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Answers unknown paths.
pub async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /api/openapi.json",
    )
}

/// Resolves `Authorization: Bearer <token>` to a [`auth::Principal`] in the request's
/// extensions, or answers 401. Unknown and wrong secrets are refused alike.
pub async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return ApiError::unauthorized("send `Authorization: Bearer <token>`").into_response();
    };
    let Some(bearer) = value.to_str().ok().and_then(control_api::bearer_token) else {
        return ApiError::unauthorized("the Authorization header must read `Bearer <token>`")
            .into_response();
    };
    let Some((token_id, secret)) = auth::parse_bearer(bearer) else {
        return ApiError::unauthorized("the bearer token is not a control token").into_response();
    };
    let token = match app.store.read().await {
        Ok(mut tx) => tx.token(token_id).await,
        Err(error) => Err(error),
    };
    let token = match token {
        Ok(token) => token,
        Err(error) => return ApiError::from(Error::Store(error)).into_response(),
    };
    // Compare against something even for unknown ids, so timing does not tell them apart.
    let stored_hash = token.as_ref().map_or("", |t| t.secret_hash.as_str());
    let matches = auth::secret_matches(secret, stored_hash);
    match token
        .as_ref()
        .filter(|_| matches)
        .and_then(auth::principal_of)
    {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        None => ApiError::unauthorized("the bearer token is unknown or revoked").into_response(),
    }
}

/// An empty body, for rebuilding requests.
pub fn body(bytes: axum::body::Bytes) -> Body {
    Body::from(bytes)
}
