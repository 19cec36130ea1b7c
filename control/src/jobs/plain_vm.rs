//! What the Plain VM job kinds share — [`PlainVmJob`], the VM's row, cloud and server, and how
//! an operation's end is recorded on the VM — and the short kinds: start (power on, then
//! running), stop (an ACPI shutdown, then off, the power cut after the grace) and destroy
//! (the server, then its firewall, which Hetzner releases only once the server is gone).
//! Nothing here ever touches the VM's OS: the platform has no way in.

use std::sync::Arc;

use async_trait::async_trait;
use control_api::agents::{AgentOperation, PeriodState};
use control_api::usage::ResourceKind;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{JobKind, Outputs, Step, StepCx, StepError, StepFuture, server};
use crate::app::App;
use crate::error::Error;
use crate::ledger::{self, ResourceRef};
use crate::providers::{Cloud, Firewalls, ProviderError, Servers, deleted};
use crate::store::{JobRow, PlainVmOutcome, PlainVmRow, StoreError, Tx};

/// A Plain VM job kind: its steps, what undoes them, and the state the VM is in once they are
/// done (`None`: destroyed).
pub(super) struct PlainVmJob {
    pub(super) steps: &'static [Step],
    pub(super) undo: &'static [Step],
    pub(super) to: Option<PeriodState>,
}

pub(super) static START: PlainVmJob = PlainVmJob {
    steps: &[
        Step {
            name: "power_on",
            run: power_on,
        },
        Step {
            name: "running",
            run: running,
        },
    ],
    undo: &[],
    to: Some(PeriodState::Running),
};

pub(super) static STOP: PlainVmJob = PlainVmJob {
    steps: &[
        Step {
            name: "shutdown",
            run: shutdown,
        },
        Step {
            name: "off",
            run: off,
        },
    ],
    undo: &[],
    to: Some(PeriodState::Paused),
};

pub(super) static DESTROY: PlainVmJob = PlainVmJob {
    steps: RELEASE,
    undo: &[],
    to: None,
};

/// Deleting whatever of the VM's exists, server first: also what undoes a provisioning that
/// failed for good.
pub(super) const RELEASE: &[Step] = &[
    Step {
        name: "delete_server",
        run: delete_server,
    },
    Step {
        name: "delete_firewall",
        run: delete_firewall,
    },
];

#[async_trait]
impl JobKind for PlainVmJob {
    fn steps(&self) -> &'static [Step] {
        self.steps
    }

    fn undo(&self) -> &'static [Step] {
        self.undo
    }

    async fn conclude(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        outputs: &Outputs,
    ) -> Result<bool, Error> {
        conclude(app, tx, job, outputs, self.to).await
    }

    async fn give_up(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        message: &str,
        released: bool,
    ) -> Result<(), Error> {
        give_up(app, tx, job, message, released).await
    }
}

/// The Plain VM the job is about.
pub(super) async fn plain_vm(cx: &StepCx<'_>) -> Result<PlainVmRow, StepError> {
    let id = &cx.job.resource_id;
    Ok(cx
        .app
        .store
        .read()
        .await?
        .plain_vm(id)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!("job {} names unknown plain VM {id}", cx.job.id))
        })?)
}

/// The cloud the VM lives on.
pub(super) fn cloud<'a>(app: &'a App, vm: &PlainVmRow) -> Result<&'a Cloud, StepError> {
    server::cloud_named(app, &vm.provider)
}

/// The firewalls of the VM's cloud: a Plain VM never exists without its own firewall.
pub(super) fn firewalls<'a>(
    app: &'a App,
    vm: &PlainVmRow,
) -> Result<&'a Arc<dyn Firewalls>, StepError> {
    cloud(app, vm)?.firewalls.as_ref().ok_or_else(|| {
        ProviderError::permanent(format!(
            "provider {} has no firewalls, and a Plain VM is never made without its own",
            vm.provider
        ))
        .into()
    })
}

/// The name the VM's server and firewall carry at the provider. (The OS's own host name is
/// the one the caller chose.)
pub(super) fn provider_name(vm: &PlainVmRow) -> String {
    server::provider_name(&vm.id)
}

/// The VM's server, found as every job finds its resource's.
async fn server_id(cx: &StepCx<'_>, vm: &PlainVmRow) -> Result<Option<String>, StepError> {
    let cloud = cloud(cx.app, vm)?;
    server::server_id(
        cx,
        cloud,
        vm.server_id.as_deref(),
        ResourceKind::PlainVm,
        &vm.id,
    )
    .await
}

/// The VM's server id and the servers of its cloud, for a step that needs the server.
async fn vm_server<'a>(cx: &StepCx<'a>) -> Result<(String, &'a Arc<dyn Servers>), StepError> {
    let vm = plain_vm(cx).await?;
    let id = server_id(cx, &vm)
        .await?
        .ok_or_else(|| ProviderError::permanent(format!("plain VM {} has no server", vm.id)))?;
    Ok((id, &cloud(cx.app, &vm)?.servers))
}

fn power_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (id, servers) = vm_server(cx).await?;
        servers.power_on(&id).await?;
        Ok(None)
    })
}

/// Done once the server runs; the output is its public addresses.
pub(super) fn running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (id, servers) = vm_server(cx).await?;
        let found = server::running(servers, &id).await?;
        Ok(Some(json!({ "ipv4": found.ipv4, "ipv6": found.ipv6 })))
    })
}

fn shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (id, servers) = vm_server(cx).await?;
        server::shutdown(cx, servers, &id).await
    })
}

fn off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (id, servers) = vm_server(cx).await?;
        server::off(cx, servers, &id).await
    })
}

fn delete_server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let vm = plain_vm(cx).await?;
        let Some(id) = server_id(cx, &vm).await? else {
            return Ok(None);
        };
        deleted(cloud(cx.app, &vm)?.servers.delete_server(&id).await)?;
        Ok(None)
    })
}

/// Every firewall carrying the VM's labels, once its server is gone.
fn delete_firewall<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let vm = plain_vm(cx).await?;
        server::delete_firewalls(firewalls(cx.app, &vm)?, ResourceKind::PlainVm, &vm.id).await?;
        Ok(None)
    })
}

/// Ends the VM's operation as the provider confirmed it: `to` from now on (`None`:
/// destroyed), with its server, firewall and addresses recorded.
async fn conclude(
    app: &App,
    tx: &mut Tx,
    job: &JobRow,
    outputs: &Outputs,
    to: Option<PeriodState>,
) -> Result<bool, Error> {
    let id = &job.resource_id;
    let address = |key: &str| {
        outputs
            .get("running")
            .and_then(|running| running.get(key))
            .and_then(Value::as_str)
    };
    let outcome = PlainVmOutcome {
        server_id: outputs.get("server").and_then(Value::as_str),
        firewall_id: outputs.get("firewall").and_then(Value::as_str),
        ipv4: address("ipv4"),
        ipv6: address("ipv6"),
        state: to,
        error: None,
    };
    let now = app.clock.now();
    if !tx
        .finish_plain_vm_operation(id, job.kind, &outcome, now.as_millis())
        .await?
    {
        return Ok(false);
    }
    let owner = owner(tx, id).await?;
    let at = if let Some(state) = to {
        ledger::switch(tx, ResourceRef::plain_vm(id), &owner, state, now).await?
    } else {
        let at = ledger::close(tx, ResourceRef::plain_vm(id), now).await?;
        tx.mark_plain_vm_destroyed(id, at.as_millis()).await?;
        at
    };
    let (job, passwords) = (job.clone(), app.passwords.clone());
    // Said once it is true: a job whose lease was lost rolls this back.
    tx.after_commit(move || {
        passwords.forget(&job.resource_id);
        info!(
            request_id = %job.request_id.as_deref().unwrap_or("-"),
            account_id = %owner,
            plain_vm_id = %job.resource_id,
            job_id = %job.id,
            operation = ?job.kind,
            state = ?to,
            at = %at,
            "plain VM operation confirmed by the provider"
        );
    });
    Ok(true)
}

/// Ends the VM's operation as failed. A provisioning whose undo released everything it had
/// made leaves nothing to bill: the VM ends there (no audit event: it was never provisioned).
/// Otherwise the VM keeps its state and shows the error.
async fn give_up(
    app: &App,
    tx: &mut Tx,
    job: &JobRow,
    message: &str,
    released: bool,
) -> Result<(), Error> {
    let id = &job.resource_id;
    let now = app.clock.now();
    let outcome = PlainVmOutcome {
        error: Some(message),
        ..PlainVmOutcome::default()
    };
    if !tx
        .finish_plain_vm_operation(id, job.kind, &outcome, now.as_millis())
        .await?
    {
        return Ok(());
    }
    let ended = job.kind == AgentOperation::Provision && released;
    if ended {
        let at = ledger::close(tx, ResourceRef::plain_vm(id), now).await?;
        tx.mark_plain_vm_destroyed(id, at.as_millis()).await?;
    }
    let (job, passwords, message) = (job.clone(), app.passwords.clone(), message.to_owned());
    tx.after_commit(move || {
        if job.kind == AgentOperation::Provision {
            passwords.forget(&job.resource_id);
        }
        warn!(
            request_id = %job.request_id.as_deref().unwrap_or("-"),
            plain_vm_id = %job.resource_id,
            job_id = %job.id,
            operation = ?job.kind,
            error = %message,
            ended,
            "plain VM operation failed"
        );
    });
    Ok(())
}

/// The VM's account, read under the row lock its compare-and-set took.
async fn owner(tx: &mut Tx, id: &str) -> Result<String, StoreError> {
    Ok(tx
        .plain_vm(id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("plain VM {id} vanished under its lock")))?
        .account_id)
}
