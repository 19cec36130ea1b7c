//! `/api/agents…`: the dashboard's Agent lifecycle endpoints.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, StatusCode};
use control_api::Timestamp;
use control_api::agents::{
    Agent, AgentList, AgentOperation, BootstrapToken, CloneAgent, ProvisionAgent, Timeline,
    TransferAgent,
};
use control_api::problem::Problem;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{Answer, ApiError};
use super::extract::{ApiJson, ApiQuery, Idempotency};
use crate::agents as lifecycle;
use crate::app::{App, Caller};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListAgents {
    /// `next_cursor` of the previous page: an Agent id.
    #[param(pattern = r"^agt_[0-9A-Za-z]{26}$")]
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Include destroyed Agents (default false).
    include_destroyed: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TimelineWindow {
    /// Start of the window (default: the Agent's provisioning).
    from: Option<Timestamp>,
    /// End of the window, exclusive (default: open-ended).
    to: Option<Timestamp>,
}

/// Provision an Agent on the current image release.
///
/// Answers 202 at once with the Agent paused and `operation: provision`; a background job
/// creates the VM, and the Agent becomes running when the provider confirms it runs.
#[utoipa::path(
    post, path = "/api/agents", operation_id = "provision_agent", tag = "agents",
    request_body = ProvisionAgent,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer")),
    responses(
        (status = 202, description = "Provisioning accepted", body = Agent),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No current image release, or the key is in use", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, naming the field", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused what provisioning needs (an image, server type or location it does not have, credentials); nothing was recorded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider is failing or over its request budget; nothing was recorded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn provision(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<ProvisionAgent>,
) -> Answer<Agent> {
    let agent = lifecycle::provision(&app, &caller, &body, idem.as_ref()).await?;
    Ok((StatusCode::ACCEPTED, Json(agent)))
}

/// List Agents: the caller's account's, or every account's for operators. Oldest first.
#[utoipa::path(
    get, path = "/api/agents", operation_id = "list_agents", tag = "agents",
    params(ListAgents),
    responses(
        (status = 200, description = "A page of Agents", body = AgentList),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListAgents>,
) -> Answer<AgentList> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=lifecycle::MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
            format!("must be from 1 to {}", lifecycle::MAX_PAGE),
        ));
    }
    let page = lifecycle::list(
        &app,
        &caller,
        query.cursor.as_deref(),
        limit,
        query.include_destroyed.unwrap_or(false),
    )
    .await?;
    Ok((StatusCode::OK, Json(page)))
}

/// One Agent, with its image pin and, when a newer release is current, the upgrade note.
#[utoipa::path(
    get, path = "/api/agents/{id}", operation_id = "get_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The Agent", body = Agent),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<Agent> {
    Ok((
        StatusCode::OK,
        Json(lifecycle::get(&app, &caller, &id).await?),
    ))
}

async fn operate(
    app: &App,
    caller: &Caller,
    id: &str,
    operation: AgentOperation,
    idem: Option<&crate::idempotency::IdempotencyKey>,
) -> Answer<Agent> {
    let agent = lifecycle::request(app, caller, id, operation, idem).await?;
    Ok((StatusCode::ACCEPTED, Json(agent)))
}

/// Start a stopped Agent on its pinned image.
#[utoipa::path(
    post, path = "/api/agents/{id}/start", operation_id = "start_agent", tag = "agents",
    params(
        ("id" = String, Path, description = "Agent id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Start accepted", body = Agent),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already running, destroyed, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn start(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<Agent> {
    operate(&app, &caller, &id, AgentOperation::Start, idem.as_ref()).await
}

/// Stop a running Agent.
#[utoipa::path(
    post, path = "/api/agents/{id}/stop", operation_id = "stop_agent", tag = "agents",
    params(
        ("id" = String, Path, description = "Agent id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Stop accepted", body = Agent),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already stopped, destroyed, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn stop(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<Agent> {
    operate(&app, &caller, &id, AgentOperation::Stop, idem.as_ref()).await
}

/// Destroy an Agent. Its periods, usage and audit events stay.
#[utoipa::path(
    delete, path = "/api/agents/{id}", operation_id = "destroy_agent", tag = "agents",
    params(
        ("id" = String, Path, description = "Agent id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Destroy accepted", body = Agent),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Destroyed already, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn destroy(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<Agent> {
    operate(&app, &caller, &id, AgentOperation::Destroy, idem.as_ref()).await
}

/// Move an Agent to another account (operators only). Usage before this instant stays with
/// the source account.
#[utoipa::path(
    post, path = "/api/agents/{id}/transfer", operation_id = "transfer_agent", tag = "agents",
    request_body = TransferAgent,
    params(
        ("id" = String, Path, description = "Agent id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 200, description = "Transferred", body = Agent),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Agent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Destroyed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown or same account, naming `to_account`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn transfer(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TransferAgent>,
) -> Answer<Agent> {
    let agent = lifecycle::transfer(&app, &caller, &id, &body, idem.as_ref()).await?;
    Ok((StatusCode::OK, Json(agent)))
}

/// Clone an Agent: a new Agent in the same account, on the current image release, whose
/// `/data/home-coder` starts as a copy of this one's (owners, modes, links and extended
/// attributes kept).
///
/// Answers 202 at once with the clone paused and `operation: provision`, and the source
/// showing `cloning_to`. For a consistent copy a running source is stopped while its slice is
/// copied and started again afterwards; a stopped one stays stopped. Its start, stop, destroy
/// and other clones are refused (409) until the clone is made. An `agent.clone` audit event
/// is written on each Agent, naming the other. Legacy Fly Agents cannot be cloned (409): their
/// slice is on a Fly volume no Hetzner server can attach.
#[utoipa::path(
    post, path = "/api/agents/{id}/clone", operation_id = "clone_agent", tag = "agents",
    request_body = CloneAgent,
    params(
        ("id" = String, Path, description = "Agent id of the source"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Clone accepted: the new Agent", body = Agent, headers(("Location" = String, description = "The clone's URL"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The source is destroyed, has an operation or another clone in progress, has no VM, is a legacy Fly Agent or lives on a cloud that cannot copy it; or no image release is current", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid name", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused what provisioning needs; nothing was recorded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider is failing or over its request budget; nothing was recorded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn clone(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CloneAgent>,
) -> Result<(StatusCode, [(HeaderName, String); 1], Json<Agent>), ApiError> {
    let agent = lifecycle::clone(&app, &caller, &id, &body, idem.as_ref()).await?;
    // A replay (same Idempotency-Key) answers the stored body alone: its `id` names the clone.
    let location = format!("/api/agents/{}", agent.id);
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
        Json(agent),
    ))
}

/// Issue a fresh bootstrap token for an Agent whose VM lost its credential (operators only).
///
/// The token is in this answer and nowhere else (the database keeps its hash); the call is an
/// audit event. The VM registers with it once and gets a new credential, which revokes its
/// older ones. Each call replaces the previous token, so it takes no Idempotency-Key: a
/// replayed answer would have to keep the secret.
#[utoipa::path(
    post, path = "/api/agents/{id}/bootstrap-token", operation_id = "rebootstrap_agent", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 201, description = "A fresh single-use token", body = BootstrapToken),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Agent", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Destroyed", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn rebootstrap(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<BootstrapToken> {
    let token = lifecycle::rebootstrap(&app, &caller, &id).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// The Agent's state periods in a window, oldest first.
#[utoipa::path(
    get, path = "/api/agents/{id}/timeline", operation_id = "agent_timeline", tag = "agents",
    params(("id" = String, Path, description = "Agent id"), TimelineWindow),
    responses(
        (status = 200, description = "State periods", body = Timeline),
        (status = 404, description = "No such Agent on this account", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid window", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn timeline(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(window): ApiQuery<TimelineWindow>,
) -> Answer<Timeline> {
    let timeline = lifecycle::timeline(&app, &caller, &id, window.from, window.to).await?;
    Ok((StatusCode::OK, Json(timeline)))
}
