//! Liveness, readiness and the API document; no token needed.

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

/// The database answers and its schema is current: send traffic here.
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
    match app.store.is_migrated().await {
        Ok(true) => Ok(healthz().await),
        _ => Err(unavailable(
            "the database schema is not current; run `control migrate`",
        )),
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/openapi.json", operation_id = "openapi_document", tag = "health",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub(super) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::openapi())
}
