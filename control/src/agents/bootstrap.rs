//! Re-bootstrapping (operators): a fresh single-use bootstrap token for an Agent whose VM lost
//! its credential. Never automatic — a provisioning retry does not re-arm a spent token — and
//! always audited.

use control_api::Timestamp;
use control_api::agents::BootstrapToken;
use control_api::audit::AuditAction;
use tracing::info;

use super::visible_agent;
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::clock::millis;
use crate::error::{Error, Result};
use crate::ingest::new_bootstrap_token;
use crate::ledger::ResourceRef;

/// Issues a fresh bootstrap token for Agent `id`, replacing the last one (spent or not). The
/// token is in the answer only; the database keeps its hash, the audit log the fact.
pub async fn rebootstrap(app: &App, caller: &Caller, id: &str) -> Result<BootstrapToken> {
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let agent = visible_agent(&mut tx, caller, id).await?;
    if !caller.principal.is_operator() {
        return Err(Error::Forbidden(
            "re-bootstrapping an agent requires an operator token".to_owned(),
        ));
    }
    if agent.destroyed_at.is_some() {
        return Err(Error::Conflict(format!("agent {id} is destroyed")));
    }
    let (token, hash) = new_bootstrap_token()?;
    let expires_at =
        Timestamp::from_millis(now.as_millis() + millis(app.settings.ingest.bootstrap_ttl));
    tx.replace_bootstrap(id, &hash, now.as_millis(), expires_at.as_millis())
        .await?;
    audit::append(
        &mut tx,
        NewEvent {
            details: serde_json::json!({ "expires_at": expires_at }),
            ..NewEvent::by(
                caller,
                now,
                AuditAction::AgentRebootstrap,
                ResourceRef::agent(id),
                &agent.account_id,
            )
        },
    )
    .await?;
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        account_id = %agent.account_id,
        agent_id = %id,
        expires_at = %expires_at,
        "agent re-bootstrapped: a fresh bootstrap token was issued to an operator"
    );
    Ok(BootstrapToken {
        agent_id: id.to_owned(),
        bootstrap_token: token,
        expires_at,
    })
}
