//! `/api/plain-vms…`: Plain VMs (a dedicated server, its own firewall, a one-shot cloud-init,
//! no agent) and their firewalls.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use control_api::agents::AgentOperation;
use control_api::plain_vms::{
    FirewallRules, PlainVm, PlainVmList, ProvisionPlainVm, TransferPlainVm,
};
use control_api::problem::Problem;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{Answer, ApiError};
use super::extract::{ApiJson, ApiQuery, Idempotency};
use crate::app::{App, Caller};
use crate::plain_vms;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListPlainVms {
    /// `next_cursor` of the previous page: a Plain VM id.
    #[param(pattern = r"^pvm_[0-9A-Za-z]{26}$")]
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Include destroyed Plain VMs (default false).
    include_destroyed: Option<bool>,
}

/// Provision a Plain VM: a dedicated server with public IPv4 and IPv6, its own firewall
/// (inbound TCP/22 only, until replaced) and a one-shot cloud-init setting its host name, the
/// chosen Vault keys and, when asked, a one-time password.
///
/// Answers 202 at once with the VM stopped and `operation: provision`; a background job makes
/// the firewall and the server. With `one_time_password: true` the answer holds the password:
/// it is shown this once (a replay of this request under its Idempotency-Key does not show it)
/// and stored nowhere; it must be changed at first login. Provisioning is not an audit event:
/// `provisioned_at` records it.
#[utoipa::path(
    post, path = "/api/plain-vms", operation_id = "provision_plain_vm", tag = "plain-vms",
    request_body = ProvisionPlainVm,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer, without the password")),
    responses(
        (status = 202, description = "Provisioning accepted", body = PlainVm),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The provider has no firewalls, or the key is in use", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input, naming the field (a host name, a Vault key, a server type, location or image the provider does not have)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused what provisioning needs; nothing was recorded", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider is failing or over its request budget; nothing was recorded; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn provision(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<ProvisionPlainVm>,
) -> Answer<PlainVm> {
    let vm = plain_vms::provision(&app, &caller, &body, idem.as_ref()).await?;
    Ok((StatusCode::ACCEPTED, Json(vm)))
}

/// List Plain VMs: the caller's account's, or every account's for operators. Oldest first.
#[utoipa::path(
    get, path = "/api/plain-vms", operation_id = "list_plain_vms", tag = "plain-vms",
    params(ListPlainVms),
    responses(
        (status = 200, description = "A page of Plain VMs", body = PlainVmList),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListPlainVms>,
) -> Answer<PlainVmList> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=plain_vms::MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
            format!("must be from 1 to {}", plain_vms::MAX_PAGE),
        ));
    }
    let page = plain_vms::list(
        &app,
        &caller,
        query.cursor.as_deref(),
        limit,
        query.include_destroyed.unwrap_or(false),
    )
    .await?;
    Ok((StatusCode::OK, Json(page)))
}

/// One Plain VM: its state, addresses and the keys it was given.
#[utoipa::path(
    get, path = "/api/plain-vms/{id}", operation_id = "get_plain_vm", tag = "plain-vms",
    params(("id" = String, Path, description = "Plain VM id")),
    responses(
        (status = 200, description = "The Plain VM", body = PlainVm),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<PlainVm> {
    Ok((
        StatusCode::OK,
        Json(plain_vms::get(&app, &caller, &id).await?),
    ))
}

async fn operate(
    app: &App,
    caller: &Caller,
    id: &str,
    operation: AgentOperation,
    idem: Option<&crate::idempotency::IdempotencyKey>,
) -> Answer<PlainVm> {
    let vm = plain_vms::request(app, caller, id, operation, idem).await?;
    Ok((StatusCode::ACCEPTED, Json(vm)))
}

/// Power a stopped Plain VM on.
#[utoipa::path(
    post, path = "/api/plain-vms/{id}/start", operation_id = "start_plain_vm", tag = "plain-vms",
    params(
        ("id" = String, Path, description = "Plain VM id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Start accepted", body = PlainVm),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already running, destroyed, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn start(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<PlainVm> {
    operate(&app, &caller, &id, AgentOperation::Start, idem.as_ref()).await
}

/// Stop a running Plain VM: an ACPI shutdown, the power cut after the grace. Stopped time is
/// billed like running time (the provider charges either way).
#[utoipa::path(
    post, path = "/api/plain-vms/{id}/stop", operation_id = "stop_plain_vm", tag = "plain-vms",
    params(
        ("id" = String, Path, description = "Plain VM id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Stop accepted", body = PlainVm),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already stopped, destroyed, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn stop(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<PlainVm> {
    operate(&app, &caller, &id, AgentOperation::Stop, idem.as_ref()).await
}

/// Destroy a Plain VM: its server and its firewall are deleted. An audit event; its periods,
/// usage and audit events stay.
#[utoipa::path(
    delete, path = "/api/plain-vms/{id}", operation_id = "destroy_plain_vm", tag = "plain-vms",
    params(
        ("id" = String, Path, description = "Plain VM id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 202, description = "Destroy accepted", body = PlainVm),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Destroyed already, or another operation in progress", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn destroy(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<PlainVm> {
    operate(&app, &caller, &id, AgentOperation::Destroy, idem.as_ref()).await
}

/// Move a Plain VM to another account (operators only): an audit event; usage before this
/// instant stays with the source account. The server and its firewall are not touched.
#[utoipa::path(
    post, path = "/api/plain-vms/{id}/transfer", operation_id = "transfer_plain_vm", tag = "plain-vms",
    request_body = TransferPlainVm,
    params(
        ("id" = String, Path, description = "Plain VM id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 200, description = "Transferred", body = PlainVm),
        (status = 403, description = "Not an operator token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such Plain VM", body = Problem, content_type = "application/problem+json"),
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
    ApiJson(body): ApiJson<TransferPlainVm>,
) -> Answer<PlainVm> {
    let vm = plain_vms::transfer(&app, &caller, &id, &body, idem.as_ref()).await?;
    Ok((StatusCode::OK, Json(vm)))
}

/// The Plain VM's inbound ruleset, read live from the provider's firewall.
#[utoipa::path(
    get, path = "/api/plain-vms/{id}/firewall", operation_id = "get_plain_vm_firewall", tag = "plain-vms",
    params(("id" = String, Path, description = "Plain VM id")),
    responses(
        (status = 200, description = "The rules the provider holds now", body = FirewallRules),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No firewall yet (provisioning), or destroyed", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused or no longer has the firewall", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider is failing or over its request budget; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_firewall(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> Answer<FirewallRules> {
    let rules = plain_vms::firewall::read(&app, &caller, &id).await?;
    Ok((StatusCode::OK, Json(rules)))
}

/// Replace the Plain VM's whole inbound ruleset, in Hetzner's rule shape: applied to the
/// provider's firewall directly (the answer comes once the provider applied it, read back),
/// with no per-edit history. Protocols tcp, udp, icmp, esp, gre; ports for tcp and udp only;
/// source networks in CIDR notation with host bits clear; at most 50 rules, 100 networks a
/// rule, 255-character descriptions; no outbound rule (no egress policy at v1). A rejected
/// ruleset changes nothing at the provider. An empty list lets nothing in.
#[utoipa::path(
    put, path = "/api/plain-vms/{id}/firewall", operation_id = "replace_plain_vm_firewall", tag = "plain-vms",
    request_body = FirewallRules,
    params(("id" = String, Path, description = "Plain VM id")),
    responses(
        (status = 200, description = "The rules the provider holds now", body = FirewallRules),
        (status = 404, description = "No such Plain VM on this account", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No firewall yet (provisioning), or destroyed", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad rule, naming its field (`rules[2].port`)", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused the ruleset or no longer has the firewall", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The provider is failing or over its request budget; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn replace_firewall(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<FirewallRules>,
) -> Answer<FirewallRules> {
    let rules = plain_vms::firewall::replace(&app, &caller, &id, &body).await?;
    Ok((StatusCode::OK, Json(rules)))
}
