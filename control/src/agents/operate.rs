//! Start, stop and destroy: accepted here, carried out by a job.

use control_api::agents::{Agent, AgentOperation, PeriodState};
use control_api::audit::AuditAction;
use tracing::info;

use super::{ACCEPTED, queue_job, reread, visible_agent};
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ledger::ResourceRef;
use crate::store::AgentRow;

/// Accepts a start, stop or destroy.
pub async fn request(
    app: &App,
    caller: &Caller,
    id: &str,
    operation: AgentOperation,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let action = match operation {
        AgentOperation::Start => AuditAction::AgentStart,
        AgentOperation::Stop => AuditAction::AgentStop,
        AgentOperation::Destroy => AuditAction::AgentDestroy,
        AgentOperation::Provision => {
            return Err(Error::Conflict(
                "provisioning is requested with POST /api/agents".to_owned(),
            ));
        }
    };
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible_agent(&mut tx, caller, id).await?;
    if !tx
        .begin_operation(
            id,
            caller.principal.account_scope(),
            operation,
            now.as_millis(),
        )
        .await?
    {
        return Err(Error::Conflict(refusal(&before, operation)));
    }
    audit::append(
        &mut tx,
        NewEvent::by(
            caller,
            now,
            action,
            ResourceRef::agent(id),
            &before.account_id,
        ),
    )
    .await?;
    queue_job(&mut tx, operation, id, caller, now).await?;
    let agent = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &agent).await?;
    super::forget_after_commit(app, &mut tx, id);
    tx.commit().await?;
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %before.account_id,
        agent_id = %id,
        operation = ?operation,
        "agent operation accepted"
    );
    Ok(agent)
}

/// Why `operation` cannot begin on `agent`, in words the dashboard can show.
pub(super) fn refusal(agent: &AgentRow, operation: AgentOperation) -> String {
    let id = &agent.id;
    if agent.destroyed_at.is_some() {
        return format!("agent {id} is destroyed");
    }
    if let Some(pending) = agent.operation {
        return format!(
            "agent {id} has a {} in progress; retry when it completes",
            verb(pending)
        );
    }
    if let Some(clone) = &agent.cloning_to {
        return format!(
            "agent {id} is being cloned into agent {clone}; retry when the clone is made"
        );
    }
    match (operation, agent.state) {
        _ if agent.provider_id.is_none() && operation != AgentOperation::Destroy => {
            format!(
                "agent {id} has no VM yet; its provisioning failed: {}",
                agent.last_error.as_deref().unwrap_or("unknown error")
            )
        }
        (AgentOperation::Start, PeriodState::Running) => format!("agent {id} is already running"),
        (AgentOperation::Stop, PeriodState::Paused) => format!("agent {id} is already stopped"),
        _ => format!("agent {id} changed while the request was handled; retry"),
    }
}

/// An operation's name in a refusal ("has a stop in progress"), for Agents and Plain VMs.
pub(crate) fn verb(operation: AgentOperation) -> &'static str {
    match operation {
        AgentOperation::Provision => "provisioning",
        AgentOperation::Start => "start",
        AgentOperation::Stop => "stop",
        AgentOperation::Destroy => "destroy",
    }
}
