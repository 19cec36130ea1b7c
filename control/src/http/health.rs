//! Liveness, readiness, the API document and the metrics; no token needed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use control_api::Health;
use control_api::problem::Problem;

use super::error::ApiError;

use crate::app::App;

/// The process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
        detail: None,
    })
}

/// The database answers, no storage fault (a full or read-only disk, a lost database server)
/// has been met since the last committed write, its schema is current and the audit chain's
/// head is its newest event: send traffic here.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready; `detail` says why", body = Problem, content_type = "application/problem+json"),
    ))]
pub(super) async fn readyz(State(app): State<App>) -> Result<Json<Health>, ApiError> {
    let unavailable = |detail: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, detail);
    if app.store.ping().await.is_err() {
        return Err(unavailable("the database does not answer"));
    }
    if let Some(fault) = app.store.storage_fault() {
        return Err(unavailable(&format!(
            "storage unavailable: {fault} (no write has committed since)"
        )));
    }
    if !matches!(app.store.is_migrated().await, Ok(true)) {
        return Err(unavailable(
            "the database schema is not current; run `control migrate`",
        ));
    }
    match crate::audit::check_head(&app.store).await {
        Ok(()) => Ok(healthz().await),
        Err(crate::store::StoreError::AuditChain(detail)) => {
            Err(unavailable(&format!("the audit log is damaged: {detail}")))
        }
        Err(_) => Err(unavailable("the database does not answer")),
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/openapi.json", operation_id = "openapi_document", tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(super) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi())
}

/// `/metrics` on the API's address when it is served apart: 404, naming where it went.
pub(super) async fn metrics_elsewhere() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "/metrics is not served on the API's address; it has a listener of its own \
         (metrics_listen, 127.0.0.1:9180 unless configured)",
    )
}

/// Counters in the Prometheus text format, on the metrics listener (not in the API document).
pub(super) async fn metrics(
    State(app): State<App>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering;
    let stats = &app.ingest.stats;
    let mut text = String::new();
    let counters = [
        (
            "control_heartbeats_total",
            "Heartbeats taken in by this replica",
            stats.heartbeats.load(Ordering::Relaxed),
        ),
        (
            "control_heartbeats_refused_total",
            "Agent calls refused (credential or bootstrap token)",
            stats.refused.load(Ordering::Relaxed),
        ),
        (
            "control_liveness_rows_written_total",
            "Agent liveness rows written (behind or at a transition)",
            stats.liveness_rows_written.load(Ordering::Relaxed),
        ),
        (
            "control_agent_transitions_total",
            "Heartbeats that changed an Agent's record at once",
            stats.transitions.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        );
    }
    let _ = write!(
        text,
        "# HELP control_agents_in_memory Agents this replica holds live heartbeats of\n# TYPE control_agents_in_memory gauge\ncontrol_agents_in_memory {}\n",
        app.ingest.agents_in_memory()
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}
