//! `POST /api/agents/import`: an operator takes a legacy Fly Agent under management.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use control_api::agents::{Agent, ImportAgent};
use control_api::problem::Problem;

use super::error::Answer;
use super::extract::{ApiJson, Idempotency};
use crate::agents as lifecycle;
use crate::app::{App, Caller};

/// Import an Agent that already runs on Fly (operators only).
///
/// Fly is asked first: the machine must exist with the volume it mounts; its state (started:
/// running; stopped or suspended: paused) is the Agent's from now on, and the machine is
/// labelled as the Agent's. Nothing is recorded when Fly does not confirm it. The audit log
/// records a provision of an adopted resource.
#[utoipa::path(
    post, path = "/api/agents/import", operation_id = "import_agent", tag = "agents",
    request_body = ImportAgent,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer")),
    responses(
        (status = 201, description = "Imported", body = Agent),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The machine is an Agent already, Fly is not configured, or no image release is current", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input (an image not by digest, a machine or volume Fly does not have), naming the field", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Fly refused, in its own words; nothing was recorded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Fly is failing or over its rate limit; nothing was recorded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn import_agent(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<ImportAgent>,
) -> Answer<Agent> {
    let agent = lifecycle::import(&app, &caller, &body, idem.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(agent)))
}
