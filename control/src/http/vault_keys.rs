//! Vault keys: an account's OpenSSH public keys, for Plain VMs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use control_api::problem::Problem;
use control_api::vault::{AddVaultKey, VaultKey, VaultKeyList};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::Answer;
use super::extract::{ApiJson, ApiQuery, Idempotency};
use crate::app::{App, Caller};
use crate::vault_keys;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListVaultKeys {
    /// Operators: only this account's keys (default: every account's). Account tokens always
    /// see their own.
    account_id: Option<String>,
}

/// Add an OpenSSH public key to an account's Vault. Plain VMs provisioned later may be given
/// it; its fingerprint is shown as `ssh-keygen -lf` prints it.
#[utoipa::path(
    post, path = "/api/vault/keys", operation_id = "add_vault_key", tag = "vault",
    request_body = AddVaultKey,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer")),
    responses(
        (status = 201, description = "Added", body = VaultKey),
        (status = 409, description = "The account holds this key already (same fingerprint), or holds 100 keys", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a key this platform takes (the reason is given: DSA, RSA under 2048 bits, a private key, options, …), or another invalid field", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn add(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    ApiJson(body): ApiJson<AddVaultKey>,
) -> Answer<VaultKey> {
    let key = vault_keys::add(&app, &caller, &body, idem.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// The keys of the caller's account (operators: of every account, or of `account_id`).
#[utoipa::path(
    get, path = "/api/vault/keys", operation_id = "list_vault_keys", tag = "vault",
    params(ListVaultKeys),
    responses(
        (status = 200, description = "The keys, oldest first", body = VaultKeyList),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListVaultKeys>,
) -> Answer<VaultKeyList> {
    let keys = vault_keys::list(&app, &caller, query.account_id.as_deref()).await?;
    Ok((StatusCode::OK, Json(keys)))
}

/// Delete a key from the account's Vault. VMs that already received it keep it: remove it
/// from their `authorized_keys` yourself if it must stop working there.
#[utoipa::path(
    delete, path = "/api/vault/keys/{id}", operation_id = "delete_vault_key", tag = "vault",
    params(
        ("id" = String, Path, description = "Vault key id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key replay the first answer"),
    ),
    responses(
        (status = 200, description = "Deleted from the account (the key as it was); VMs that received it keep it", body = VaultKey),
        (status = 404, description = "No such key on this account", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(super) async fn delete(
    State(app): State<App>,
    caller: Caller,
    Idempotency(idem): Idempotency,
    Path(id): Path<String>,
) -> Answer<VaultKey> {
    let key = vault_keys::delete(&app, &caller, &id, idem.as_ref()).await?;
    Ok((StatusCode::OK, Json(key)))
}
