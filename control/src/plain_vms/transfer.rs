//! Transfers between accounts (operators): an audit event, and the ledger split at the
//! instant of the request. No provider is called: the server and its firewall stay as they
//! are, only the account billed changes.

use control_api::audit::AuditAction;
use control_api::plain_vms::{PlainVm, TransferPlainVm};
use tracing::info;

use super::{reread, visible};
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::prefix;
use crate::ledger::{self, ResourceRef};

/// Moves a Plain VM to another account at this instant: the source's open period ends now and
/// the destination's begins now in the same state. Operators only.
pub async fn transfer(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &TransferPlainVm,
    idem: Option<&IdempotencyKey>,
) -> Result<PlainVm> {
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible(&mut tx, caller, id).await?;
    if !caller.principal.is_operator() {
        return Err(Error::Forbidden(
            "transferring a plain VM requires an operator token".to_owned(),
        ));
    }
    let to = request.to_account.as_str();
    if to == before.account_id {
        return Err(Error::invalid(
            "to_account",
            format!("plain VM {id} already belongs to account {to}"),
        ));
    }
    if !crate::ids::looks_like(prefix::ACCOUNT, to) || tx.account(to).await?.is_none() {
        return Err(Error::invalid(
            "to_account",
            format!("no account {}", to.escape_debug()),
        ));
    }
    if before.destroyed_at.is_some() {
        return Err(Error::Conflict(format!("plain VM {id} is destroyed")));
    }
    if !tx
        .reassign_plain_vm(id, &before.account_id, to, now.as_millis())
        .await?
    {
        return Err(Error::Conflict(format!(
            "plain VM {id} changed while the request was handled; retry"
        )));
    }
    let (at, state) = ledger::transfer(&mut tx, ResourceRef::plain_vm(id), to, now).await?;
    audit::append(
        &mut tx,
        NewEvent {
            to_account_id: Some(to),
            details: serde_json::json!({ "state": state }),
            ..NewEvent::by(
                caller,
                at,
                AuditAction::PlainVmTransfer,
                ResourceRef::plain_vm(id),
                &before.account_id,
            )
        },
    )
    .await?;
    let vm = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, 200, &vm).await?;
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        plain_vm_id = %id,
        from_account_id = %before.account_id,
        to_account_id = %to,
        "plain VM transferred"
    );
    Ok(vm)
}
