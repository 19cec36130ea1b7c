//! Usage and audit: what the dashboard bills and what auditors read.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use control_api::Day;
use control_api::audit::{AuditPage, AuditVerification};
use control_api::problem::Problem;
use control_api::usage::UsageReport;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::Answer;
use super::extract::{ApiQuery, Operator};
use crate::app::{App, Caller};
use crate::audit;
use crate::error::Error;
use crate::ledger::report as usage;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageRange {
    /// First day, `YYYY-MM-DD` (UTC), a year from 0000 to 9999.
    from: Day,
    /// Last day, inclusive, `YYYY-MM-DD`: not before `from`, and at most 366 days from it
    /// (`from` included).
    to: Day,
    /// Operators only: one account's rows.
    #[param(pattern = r"^acc_[0-9A-Za-z]{26}$")]
    account_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only events about this resource: a resource id (three lowercase letters, `_` and 26
    /// letters or digits).
    #[param(pattern = r"^[a-z]{3}_[0-9A-Za-z]{26}$")]
    resource_id: Option<String>,
    /// `next_cursor` of the previous page: the position of its last event, 1 to 18 digits.
    #[param(pattern = r"^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Daily usage rows, destroyed and transferred resources included, each day attributed to the
/// account that owned the resource then.
#[utoipa::path(
    get, path = "/api/usage", operation_id = "get_usage", tag = "usage",
    params(UsageRange),
    responses(
        (status = 200, description = "Daily rows", body = UsageReport),
        (status = 422, description = "Invalid range, naming the field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn usage(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(range): ApiQuery<UsageRange>,
) -> Answer<UsageReport> {
    let report = usage::report(
        &app,
        &caller,
        range.from,
        range.to,
        range.account_id.as_deref(),
    )
    .await?;
    Ok((StatusCode::OK, Json(report)))
}

/// Audit events in chain order, destroyed resources included.
#[utoipa::path(
    get, path = "/api/audit", operation_id = "list_audit_events", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of events", body = AuditPage),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn audit(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Answer<AuditPage> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=audit::MAX_PAGE).contains(&limit) {
        return Err(
            Error::invalid("limit", format!("must be from 1 to {}", audit::MAX_PAGE)).into(),
        );
    }
    // The form the document gives a cursor: a position, in decimal digits (18 at most, so it
    // always fits the stored 64-bit position).
    let is_cursor =
        |text: &str| (1..=18).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    if query
        .cursor
        .as_deref()
        .is_some_and(|cursor| !is_cursor(cursor))
    {
        return Err(Error::invalid("cursor", "is not a cursor this API returned").into());
    }
    let page = audit::list(
        &app,
        &caller,
        query.resource_id.as_deref(),
        query.cursor.as_deref(),
        limit,
    )
    .await?;
    Ok((StatusCode::OK, Json(page)))
}

/// Walk the whole audit chain (operators only). `ok: false` names the first bad event.
#[utoipa::path(
    get, path = "/api/audit/verify", operation_id = "verify_audit_chain", tag = "audit",
    responses(
        (status = 200, description = "The verdict", body = AuditVerification),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn verify(
    State(app): State<App>,
    _operator: Operator,
) -> Answer<AuditVerification> {
    let verdict = audit::verify(&app.store).await.map_err(Error::from)?;
    Ok((StatusCode::OK, Json(verdict)))
}
