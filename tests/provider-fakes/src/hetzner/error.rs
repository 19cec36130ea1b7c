//! Hetzner's error envelope `{"error": {"code", "message", "details"}}` with the status each code
//! has at Hetzner. Every refusal of the fake goes through here, so none can leave without it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            details: json!({}),
        }
    }

    /// `invalid_input` naming the offending fields, as Hetzner's `details.fields`.
    pub(crate) fn invalid(fields: &[(&str, String)]) -> ApiError {
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input".to_owned(),
            message: format!("invalid input in fields '{}'", names.join("', '")),
            details: json!({
                "fields": fields
                    .iter()
                    .map(|(name, message)| json!({"name": name, "messages": [message]}))
                    .collect::<Vec<_>>()
            }),
        }
    }

    pub(crate) fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(&[(field, message.into())])
    }

    pub(crate) fn not_found(kind: &str, id: u64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} with ID '{id}' not found"),
        )
    }

    pub(crate) fn uniqueness(field: &str) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "uniqueness_error".to_owned(),
            message: format!("{field} is already used"),
            details: json!({"fields": [{"name": field}]}),
        }
    }

    pub(crate) fn locked(kind: &str) -> ApiError {
        ApiError::new(
            StatusCode::LOCKED,
            "locked",
            format!("{kind} is locked by a running action"),
        )
    }

    pub(crate) fn unprocessable(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unable to authenticate",
        )
    }

    pub(crate) fn rate_limited() -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "limit of requests per hour reached",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"code": self.code, "message": self.message, "details": self.details}
        });
        (self.status, Json(body)).into_response()
    }
}

/// Parses a request body: bad JSON is `json_error` (400), a well-formed body of the wrong shape
/// is `invalid_input` naming the field.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "json_error",
                format!("request body is not valid JSON: {e}"),
            )
        })?
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = path.split(['.', '[']).next().unwrap_or("").to_owned();
        let message = e.into_inner().to_string();
        let field = if field.is_empty() || field == "." {
            "body".to_owned()
        } else {
            field
        };
        ApiError::invalid(&[(field.as_str(), message)])
    })
}
