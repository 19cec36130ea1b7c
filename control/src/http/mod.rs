//! The HTTP API: routes, their OpenAPI document, and the layers around them.
//!
//! Routes are registered through `utoipa_axum`, which takes each path from the handler's
//! `#[utoipa::path]` attribute, so a route cannot exist without its entry in the document.
//! The document is also committed (`control/openapi.json`) and a test fails when the two drift.

mod accounts;
mod agents;
mod audit;
pub mod error;
pub mod extract;
mod health;
mod idempotency;
mod import;
pub mod middleware;
mod plain_vms;
mod shape;
mod shared;
mod usage;
mod vault_keys;
mod vm_agent;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::App;

/// Largest request body the API accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "control",
        description = "The control plane API for dedicated-VM hosting: Agents, Plain VMs, usage and the audit log. \
            Errors are application/problem+json (RFC 9457) naming the offending field.",
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "agents", description = "Agent lifecycle, image pins and timelines"),
        (name = "accounts", description = "Accounts and API tokens (operators)"),
        (name = "images", description = "Platform image releases (operators)"),
        (name = "usage", description = "Daily usage rolled up from state periods"),
        (name = "plain-vms", description = "Plain VMs: a dedicated server, its own firewall and a one-shot cloud-init, no agent"),
        (name = "vault", description = "An account's OpenSSH public keys, for Plain VMs"),
        (name = "audit", description = "The append-only, hash-chained audit log"),
        (name = "agent", description = "What vm-agent calls, with its bootstrap token or credential"),
        (name = "health", description = "Liveness, readiness, this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "agent_credential",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Routes that need a bearer token (and honour Idempotency-Key on POST and DELETE).
fn authenticated_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(agents::provision, agents::list))
        .routes(routes!(agents::get, agents::destroy))
        .routes(routes!(agents::start))
        .routes(routes!(agents::stop))
        .routes(routes!(agents::transfer))
        .routes(routes!(agents::clone))
        .routes(routes!(import::import_agent))
        .routes(routes!(agents::rebootstrap))
        .routes(routes!(agents::timeline))
        .routes(routes!(accounts::create_account))
        .routes(routes!(accounts::create_token))
        .routes(routes!(accounts::register_image, accounts::list_images))
        .routes(routes!(accounts::set_current_image))
        .routes(routes!(usage::usage))
        .routes(routes!(usage::audit))
        .routes(routes!(usage::verify))
        .routes(routes!(audit::checkpoints))
        .routes(routes!(vault_keys::add, vault_keys::list))
        .routes(routes!(vault_keys::delete))
        .routes(routes!(plain_vms::provision, plain_vms::list))
        .routes(routes!(plain_vms::get, plain_vms::destroy))
        .routes(routes!(plain_vms::start))
        .routes(routes!(plain_vms::stop))
        .routes(routes!(plain_vms::transfer))
        .routes(routes!(
            plain_vms::get_firewall,
            plain_vms::replace_firewall
        ))
}

/// Routes vm-agent calls with its own bootstrap token or credential.
fn agent_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(vm_agent::register))
        .routes(routes!(vm_agent::heartbeat))
}

/// Routes anyone may call.
fn public_routes() -> OpenApiRouter<App> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi))
}

fn document(routes: OpenApiRouter<App>) -> (Router<App>, OpenApi) {
    let (served, mut document) =
        OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
            .merge(routes)
            .split_for_parts();
    shared::complete(&mut document);
    (served, document)
}

/// The API document, as served and as committed.
pub fn openapi() -> OpenApi {
    document(
        authenticated_routes()
            .merge(agent_routes())
            .merge(public_routes()),
    )
    .1
}

/// The whole HTTP application. Layers, outermost first: request id, problem documents, panic
/// catcher, body limit; then authentication and idempotency on the authenticated routes.
///
/// `/metrics` is not part of the API: it is served on a listener of its own
/// ([`metrics_router`]), and here answers 404 saying so, for operators whose scraper still
/// looks for it on the API's address.
pub fn router(app: App) -> Router {
    api_router(app, get(health::metrics_elsewhere))
}

/// [`router`] with `/metrics` served too: for a `metrics_listen` that is the API's own address.
pub fn router_with_metrics(app: App) -> Router {
    api_router(app, get(health::metrics))
}

/// `/metrics` alone, for the metrics listener (`metrics_listen`).
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .fallback(middleware::fallback)
        .layer(from_fn(middleware::problem_context))
        .layer(from_fn(middleware::request_id))
        .with_state(app)
}

fn api_router(app: App, metrics: MethodRouter<App>) -> Router {
    // A method a path does not have is answered 405 before anything else, rather than
    // authenticated and its Idempotency-Key claimed first.
    let authenticated = authenticated_routes()
        .layer(from_fn_with_state(app.clone(), idempotency::idempotency))
        .layer(from_fn_with_state(app.clone(), middleware::authenticate))
        .layer(from_fn(middleware::documented_method));
    let agents = agent_routes().layer(DefaultBodyLimit::max(vm_agent::BODY_LIMIT));
    let (routes, _) = document(authenticated.merge(agents).merge(public_routes()));
    routes
        .route("/metrics", metrics)
        .fallback(middleware::fallback)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_panic| {
            error::ApiError::internal().into_response()
        }))
        .layer(from_fn(middleware::problem_context))
        .layer(from_fn(middleware::request_id))
        .with_state(app)
}

/// The API document, built once for what reads it at run time (the request checks).
pub(crate) fn served_openapi() -> &'static OpenApi {
    static DOCUMENT: std::sync::OnceLock<OpenApi> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(openapi)
}

/// The OpenAPI document as committed: pretty JSON with a trailing newline.
pub fn openapi_json() -> String {
    openapi().to_pretty_json().unwrap_or_default()
}
