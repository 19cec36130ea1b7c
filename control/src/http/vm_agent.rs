//! `/api/agent/v1/…`: what vm-agent calls, with its bootstrap token or its credential rather
//! than a dashboard token. Heartbeats are checked for their credential before their body is
//! parsed (a stranger's malformed body gets 401, not a parse error), and never logged one by
//! one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use control_api::agent::{Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse};
use control_api::problem::Problem;

use super::error::ApiError;
use super::extract::{ApiJson, parse_json};
use crate::app::App;
use crate::error::Error;
use crate::ingest::{Ingest, IngestError};

/// Largest request an agent may send.
pub(super) const BODY_LIMIT: usize = 16 * 1024;

/// What a heartbeat needs of the application: cloning the whole `App` for each of them
/// (its settings' strings, its providers) cost more than the heartbeat's own work.
impl FromRef<App> for Arc<Ingest> {
    fn from_ref(app: &App) -> Self {
        app.ingest.clone()
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Unauthorized(detail) => Self::unauthorized(detail),
            IngestError::Forbidden(detail) => Self::forbidden(detail),
            IngestError::Store(e) => Error::Store(e).into(),
            IngestError::Random(e) => Error::Random(e).into(),
        }
    }
}

/// Trade the single-use bootstrap token for the Agent's credential (vm-agent's first contact).
#[utoipa::path(
    post, path = "/api/agent/v1/register", operation_id = "register_agent", tag = "agent",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "The credential, shown this once", body = RegisterResponse),
        (status = 401, description = "Unknown, used or expired bootstrap token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed request, naming the field", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn register(
    State(app): State<App>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    Ok(Json(app.ingest.register(&request).await?))
}

/// Report in; the answer says when to report next.
#[utoipa::path(
    post, path = "/api/agent/v1/heartbeat", operation_id = "agent_heartbeat", tag = "agent",
    request_body = Heartbeat,
    responses(
        (status = 200, description = "Recorded", body = HeartbeatAck),
        (status = 401, description = "Missing, unknown or revoked credential", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The credential is another Agent's, or the Agent is destroyed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed heartbeat, naming the field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("agent_credential" = []))
)]
pub(super) async fn heartbeat(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(control_api::bearer_token)
        .ok_or_else(|| {
            ingest
                .stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            ApiError::unauthorized("send `Authorization: Bearer <agent credential>`")
        })?;
    let agent_id = ingest.authenticate_heartbeat(bearer).await?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the heartbeat as JSON with `Content-Type: application/json`",
        ));
    }
    let beat: Heartbeat = parse_json(&body)?;
    Ok(Json(ingest.heartbeat_of(&agent_id, beat).await?))
}
