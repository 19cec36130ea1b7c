//! The audit log's signed checkpoints (the events themselves are listed in `usage`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use control_api::audit::AuditCheckpointPage;
use control_api::problem::Problem;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::Answer;
use super::extract::{ApiQuery, Operator};
use crate::app::App;
use crate::audit::checkpoint;
use crate::error::Error;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CheckpointQuery {
    /// `next_cursor` of the previous page: the position of its last checkpoint, 1 to 18 digits.
    #[param(pattern = r"^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Signed checkpoints of the audit chain's head, newest first (operators only). Keep them
/// outside control: `control audit verify --checkpoint FILE` (FILE holding one item) proves the
/// log still holds every event up to it.
#[utoipa::path(
    get, path = "/api/audit/checkpoints", operation_id = "list_audit_checkpoints", tag = "audit",
    params(CheckpointQuery),
    responses(
        (status = 200, description = "A page of checkpoints", body = AuditCheckpointPage),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn checkpoints(
    State(app): State<App>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<CheckpointQuery>,
) -> Answer<AuditCheckpointPage> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=checkpoint::MAX_PAGE).contains(&limit) {
        return Err(Error::invalid(
            "limit",
            format!("must be from 1 to {}", checkpoint::MAX_PAGE),
        )
        .into());
    }
    let page = checkpoint::list(&app.store, query.cursor.as_deref(), limit).await?;
    Ok((StatusCode::OK, Json(page)))
}
