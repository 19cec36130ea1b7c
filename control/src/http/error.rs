//! The one HTTP error type. Every 4xx and 5xx leaves as `application/problem+json` (RFC 9457);
//! internal errors are logged whole, with the request id, and shown as a generic 500.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use control_api::problem::{FieldError, PROBLEM_JSON, Problem};
use tracing::{error, warn};

use crate::error::Error;
use crate::store::StoreError;

/// What a JSON handler answers: a status and a body, or a problem.
pub(super) type Answer<T> = Result<(StatusCode, Json<T>), ApiError>;

/// A problem answer under construction.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Seconds after which the request may be repeated (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 422 (400 for unparseable JSON) naming one field.
    pub fn field(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        let (field, message) = (field.into(), message.into());
        Self {
            status,
            detail: format!("{field}: {message}"),
            errors: vec![FieldError { field, message }],
            retry_after: None,
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an internal error occurred; it was logged with this request's id",
        )
    }
}

/// The problem type, title and status of every status this API answers with.
pub fn kind_and_title(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::BAD_REQUEST => ("/problems/malformed-request", "Malformed request"),
        StatusCode::UNAUTHORIZED => ("/problems/unauthorized", "Unauthorized"),
        StatusCode::FORBIDDEN => ("/problems/forbidden", "Forbidden"),
        StatusCode::NOT_FOUND => ("/problems/not-found", "Not found"),
        StatusCode::METHOD_NOT_ALLOWED => ("/problems/method-not-allowed", "Method not allowed"),
        StatusCode::CONFLICT => ("/problems/conflict", "Conflict"),
        StatusCode::PAYLOAD_TOO_LARGE => ("/problems/too-large", "Request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("/problems/unsupported-media-type", "Unsupported media type")
        }
        StatusCode::UNPROCESSABLE_ENTITY => ("/problems/invalid-input", "Invalid input"),
        StatusCode::SERVICE_UNAVAILABLE => ("/problems/unavailable", "Service unavailable"),
        StatusCode::BAD_GATEWAY => ("/problems/provider-refused", "Refused by a provider"),
        s if s.is_server_error() => ("/problems/internal", "Internal error"),
        _ => ("about:blank", status.canonical_reason().unwrap_or("Error")),
    }
}

/// A problem document for `status`; the request id and instance are filled in on the way out
/// (see `http::problem_context`).
pub fn problem(status: StatusCode, detail: String, errors: Vec<FieldError>) -> Problem {
    let (kind, title) = kind_and_title(status);
    Problem {
        kind: kind.to_owned(),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
        instance: None,
        request_id: None,
        errors,
    }
}

/// Renders a problem document as a response.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem_response(&problem(self.status, self.detail, self.errors));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// When a caller may try again after a change was refused for a damaged audit chain: an
/// operator has to act first, so not soon.
const AUDIT_CHAIN_RETRY_AFTER_S: u64 = 300;

/// When a caller may try again after the storage was unavailable: a disk gets space back or a
/// database server restarts in seconds, or an operator is paged; either way a few seconds.
const STORAGE_RETRY_AFTER_S: u64 = 5;

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(errors) => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                detail: errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                errors,
                retry_after: None,
            },
            Error::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, error.to_string()),
            Error::Forbidden(detail) => Self::forbidden(detail),
            Error::Conflict(detail) | Error::Store(StoreError::Superseded(detail)) => {
                Self::new(StatusCode::CONFLICT, detail)
            }
            Error::Provider(detail) => Self::new(StatusCode::BAD_GATEWAY, detail),
            Error::ProviderUnavailable {
                detail,
                retry_after,
            } => Self {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
            },
            Error::Store(StoreError::Conflict(_)) => Self::new(
                StatusCode::CONFLICT,
                "the request conflicts with a concurrent change; retry it",
            ),
            Error::Store(StoreError::AuditChain(detail)) => {
                error!(%detail, "refusing a change: the audit chain is damaged");
                Self {
                    retry_after: Some(AUDIT_CHAIN_RETRY_AFTER_S),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("the audit log is damaged, so no change can be recorded: {detail}"),
                    )
                }
            }
            Error::Store(StoreError::Unavailable(ref source)) => {
                warn!(error = %source, "request refused: storage unavailable");
                Self {
                    retry_after: Some(STORAGE_RETRY_AFTER_S),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage unavailable: the database cannot be written or reached right \
                         now (a full or read-only disk, or a database server that went away); \
                         nothing was changed, retry shortly",
                    )
                }
            }
            Error::Store(StoreError::Connect { .. }) => {
                log_chain(&error);
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unreachable; retry shortly",
                )
            }
            Error::Store(_) | Error::Random(_) | Error::Internal(_) => {
                log_chain(&error);
                Self::internal()
            }
        }
    }
}

/// Logs an error with its whole source chain, once, where it is handled.
fn log_chain(error: &dyn std::error::Error) {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    error!(error = %chain, "request failed");
}
