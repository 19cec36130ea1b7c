//! Request extractors whose rejections are problem documents naming the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::app::Caller;
use crate::auth::Principal;
use crate::idempotency::IdempotencyKey;

/// The request's ids (see `http::middleware::request_id`).
#[derive(Clone, Debug)]
pub struct RequestId {
    /// Ours, new for every request: every log line, audit event and problem document carries it.
    pub id: String,
    /// What the caller sent as `X-Request-Id`, if it was sane: kept beside ours, for the caller
    /// to find its request again.
    pub caller: Option<String>,
}

/// A JSON body: `application/json`, syntactically valid (else 400), and of the documented
/// shape (else 422 naming the field: unknown, missing or of the wrong type, an array where the
/// document says object, an integer out of its documented range).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + ToSchema,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                ApiError::new(status, rejection.body_text())
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document into `T`, naming the field that does not fit (400 when it is not
/// JSON, 422 when it breaks the schema or does not deserialize).
///
/// A body that fits is read once ([`super::shape::read`]): every heartbeat comes through here.
/// Any other body is left to [`parse_json_two_pass`], whose answer is the exact one; the one
/// pass only answers when the two passes would answer the same value.
pub fn parse_json<T: DeserializeOwned + ToSchema>(bytes: &[u8]) -> Result<T, ApiError> {
    match super::shape::read(&T::name(), bytes) {
        Some(value) => Ok(value),
        None => parse_json_two_pass(bytes),
    }
}

/// The document is read along what the API document says of `T` first ([`super::shape`]; 400
/// when it is not JSON, 422 when it breaks the schema), then deserialized: two readings, so the
/// first error found is the one a whole-document parse would have found first.
pub(super) fn parse_json_two_pass<T: DeserializeOwned + ToSchema>(
    bytes: &[u8],
) -> Result<T, ApiError> {
    super::shape::check(&T::name(), bytes).map_err(|found| match found {
        super::shape::Found::Violation((field, message)) => {
            ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
        }
        super::shape::Found::Malformed(error) => {
            let message = strip_position(&error.to_string());
            ApiError::field(
                StatusCode::BAD_REQUEST,
                "body",
                format!("malformed JSON: {message}"),
            )
        }
    })?;
    // Read again when it does not fit, for the path to the field that does not.
    serde_json::from_slice(bytes).or_else(|_| {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(
            |error| {
                let message = strip_position(&error.inner().to_string());
                let field = field_name(&error.path().to_string(), &message);
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            },
        )
    })
}

/// A query string of the expected shape; unknown parameters are refused, naming them.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|error| {
                let message = error.inner().to_string();
                let field = field_name(&error.path().to_string(), &message);
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            })
    }
}

/// The field an error is about (see [`control_api::error_field`]); the body itself, or an
/// element of a top-level array that is not an object missing a field, is `body`.
fn field_name(path: &str, message: &str) -> String {
    let missing = message.starts_with("missing field `");
    match control_api::error_field(path, message) {
        field if field.is_empty() || (field.starts_with('[') && !missing) => "body".to_owned(),
        field => field,
    }
}

/// Drops the " at line 1 column 9" suffix of `serde_json` messages.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("this endpoint needs a bearer token"))?;
        let ids = parts.extensions.get::<RequestId>();
        let mut caller = Caller::new(principal, ids.map(|ids| ids.id.clone()));
        caller.caller_request_id = ids.and_then(|ids| ids.caller.clone());
        Ok(caller)
    }
}

/// A caller holding an operator token; anyone else gets 403.
#[derive(Debug)]
pub struct Operator(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.principal.is_operator() {
            Ok(Self(caller))
        } else {
            Err(ApiError::forbidden("this endpoint needs an operator token"))
        }
    }
}

/// The Idempotency-Key claimed for this request, if the caller sent one.
#[derive(Debug)]
pub struct Idempotency(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<IdempotencyKey>().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        refs: BTreeMap<String, String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn rejected(body: &str) -> (u16, String) {
        let error = parse_json::<Body>(body.as_bytes()).unwrap_err();
        (error.status.as_u16(), error.errors[0].field.clone())
    }

    #[test]
    fn every_rejection_names_its_field() {
        assert_eq!(
            rejected(r#"{"name": 5, "refs": {}}"#),
            (422, "name".to_owned())
        );
        assert_eq!(
            rejected(r#"{"name": "x", "refs": {}, "bogus": 1}"#),
            (422, "bogus".to_owned())
        );
        assert_eq!(rejected(r#"{"refs": {}}"#), (422, "name".to_owned()));
        assert_eq!(
            rejected(r#"{"name": "x", "refs": {"a": 1}}"#),
            (422, "refs.a".to_owned())
        );
        assert_eq!(
            rejected(r#"{"name": "x", "refs": {}, "inner": {}}"#),
            (422, "inner.port".to_owned())
        );
        assert_eq!(
            rejected(r#"{"name": "x", "refs": {}, "inner": {"port": "a"}}"#),
            (422, "inner.port".to_owned())
        );
        assert_eq!(rejected("[1]"), (422, "body".to_owned()));
        assert_eq!(rejected(r#"{"name": "x""#), (400, "body".to_owned()));
        assert_eq!(
            rejected(r#"{"name": "x", "refs": {}} trailing"#),
            (400, "body".to_owned())
        );
        assert_eq!(rejected(""), (400, "body".to_owned()));
    }
}
