//! Transfers between accounts (operators): the ledger splits at the instant of the request.

use control_api::agents::{Agent, TransferAgent};
use control_api::audit::AuditAction;
use tracing::info;

use super::{reread, visible_agent};
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::prefix;
use crate::ledger::{self, ResourceRef};

/// Moves an Agent to another account at this instant: the source's open period ends now and
/// the destination's begins now in the same state. Operators only.
pub async fn transfer(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &TransferAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible_agent(&mut tx, caller, id).await?;
    if !caller.principal.is_operator() {
        return Err(Error::Forbidden(
            "transferring an agent requires an operator token".to_owned(),
        ));
    }
    let to = request.to_account.as_str();
    if to == before.account_id {
        return Err(Error::invalid(
            "to_account",
            format!("agent {id} already belongs to account {to}"),
        ));
    }
    if !crate::ids::looks_like(prefix::ACCOUNT, to) || tx.account(to).await?.is_none() {
        return Err(Error::invalid(
            "to_account",
            format!("no account {}", to.escape_debug()),
        ));
    }
    if before.destroyed_at.is_some() {
        return Err(Error::Conflict(format!("agent {id} is destroyed")));
    }
    if !tx
        .reassign_agent(id, &before.account_id, to, now.as_millis())
        .await?
    {
        return Err(Error::Conflict(format!(
            "agent {id} changed while the request was handled; retry"
        )));
    }
    // The event records the instant the ledger split at.
    let (at, state) = ledger::transfer(&mut tx, ResourceRef::agent(id), to, now).await?;
    audit::append(
        &mut tx,
        NewEvent {
            to_account_id: Some(to),
            details: serde_json::json!({ "state": state }),
            ..NewEvent::by(
                caller,
                at,
                AuditAction::AgentTransfer,
                ResourceRef::agent(id),
                &before.account_id,
            )
        },
    )
    .await?;
    let agent = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, 200, &agent).await?;
    super::forget_after_commit(app, &mut tx, id);
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        agent_id = %id,
        from_account_id = %before.account_id,
        to_account_id = %to,
        "agent transferred"
    );
    Ok(agent)
}
