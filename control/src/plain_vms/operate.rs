//! Start, stop and destroy: accepted here, carried out by a job. Destroy is an audit event
//! (it outlives the VM); start and stop are not, for Plain VMs.

use control_api::agents::{AgentOperation, PeriodState};
use control_api::audit::AuditAction;
use control_api::plain_vms::PlainVm;
use tracing::info;

use super::{queue_job, reread, visible};
use crate::agents::ACCEPTED;
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ledger::ResourceRef;
use crate::store::PlainVmRow;

/// Accepts a start, stop or destroy.
pub async fn request(
    app: &App,
    caller: &Caller,
    id: &str,
    operation: AgentOperation,
    idem: Option<&IdempotencyKey>,
) -> Result<PlainVm> {
    if operation == AgentOperation::Provision {
        return Err(Error::Conflict(
            "provisioning is requested with POST /api/plain-vms".to_owned(),
        ));
    }
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible(&mut tx, caller, id).await?;
    if !tx
        .begin_plain_vm_operation(
            id,
            caller.principal.account_scope(),
            operation,
            now.as_millis(),
        )
        .await?
    {
        return Err(Error::Conflict(refusal(&before, operation)));
    }
    if operation == AgentOperation::Destroy {
        audit::append(
            &mut tx,
            NewEvent {
                details: serde_json::json!({
                    "name": before.name,
                    "hostname": before.hostname,
                    "provider": before.provider,
                    "server_id": before.server_id,
                    "ipv4": before.ipv4,
                    "ipv6": before.ipv6,
                }),
                ..NewEvent::by(
                    caller,
                    now,
                    AuditAction::PlainVmDestroy,
                    ResourceRef::plain_vm(id),
                    &before.account_id,
                )
            },
        )
        .await?;
    }
    queue_job(&mut tx, operation, id, caller, now).await?;
    let vm = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &vm).await?;
    tx.commit().await?;
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %before.account_id,
        plain_vm_id = %id,
        operation = ?operation,
        "plain VM operation accepted"
    );
    Ok(vm)
}

/// Why `operation` cannot begin on `vm`, in words the dashboard can show.
fn refusal(vm: &PlainVmRow, operation: AgentOperation) -> String {
    let id = &vm.id;
    if vm.destroyed_at.is_some() {
        return format!("plain VM {id} is destroyed");
    }
    if let Some(pending) = vm.operation {
        return format!(
            "plain VM {id} has a {} in progress; retry when it completes",
            crate::agents::verb(pending)
        );
    }
    match (operation, vm.state) {
        _ if vm.server_id.is_none() && operation != AgentOperation::Destroy => {
            format!("plain VM {id} has no server")
        }
        (AgentOperation::Start, PeriodState::Running) => {
            format!("plain VM {id} is already running")
        }
        (AgentOperation::Stop, PeriodState::Paused) => format!("plain VM {id} is already stopped"),
        _ => format!("plain VM {id} changed while the request was handled; retry"),
    }
}
