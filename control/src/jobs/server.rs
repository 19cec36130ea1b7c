//! What Agent and Plain VM jobs do alike to a server: wait until it runs, and see it off
//! within the stop grace.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{StepCx, StepError, StepResult};
use crate::app::App;
use crate::clock::millis;
use control_api::usage::ResourceKind;

use crate::providers::{
    Cloud, Firewalls, ProviderError, Server, ServerStatus, Servers, deleted, resource_labels,
};

/// Deletes every firewall carrying `kind` `id`'s labels (once its server is gone: Hetzner
/// refuses to delete a firewall still applied). Whatever is gone already is done.
pub(super) async fn delete_firewalls(
    firewalls: &Arc<dyn Firewalls>,
    kind: ResourceKind,
    id: &str,
) -> Result<(), ProviderError> {
    let labels = resource_labels(kind, id);
    for firewall in firewalls.list_firewalls(&labels, None).await?.items {
        deleted(firewalls.delete_firewall(&firewall.id).await)?;
    }
    Ok(())
}

/// How often a job looks whether a server got where it was asked to.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

/// The cloud a resource recorded as living on `provider` lives on.
pub(super) fn cloud_named<'a>(app: &'a App, provider: &str) -> Result<&'a Cloud, StepError> {
    app.providers.get(provider).ok_or_else(|| {
        ProviderError::permanent(format!(
            "provider {provider} is not configured on this control plane"
        ))
        .into()
    })
}

/// The name a resource's provider resources carry: its id as a hostname (no underscores, no
/// capitals), deterministic, so a repeated create meets a uniqueness conflict.
pub(super) fn provider_name(id: &str) -> String {
    id.replace('_', "-").to_ascii_lowercase()
}

/// The server of `kind` `id`: the one an earlier step of the job found or made, else the one
/// `recorded`, else the one carrying its labels (a provisioning that died before recording
/// it).
pub(super) async fn server_id(
    cx: &StepCx<'_>,
    cloud: &Cloud,
    recorded: Option<&str>,
    kind: ResourceKind,
    id: &str,
) -> Result<Option<String>, StepError> {
    if let Some(made) = cx.output("server").or(recorded) {
        return Ok(Some(made.to_owned()));
    }
    let found = cloud
        .servers
        .list_servers(&resource_labels(kind, id), None)
        .await?;
    Ok(found.items.into_iter().next().map(|server| server.id))
}

/// The server once the provider reports it running; until then a wait, so the runner looks
/// again; a server that is off instead of starting is a failure.
pub(super) async fn running(servers: &Arc<dyn Servers>, id: &str) -> Result<Server, StepError> {
    let server = servers
        .get_server(id)
        .await?
        .ok_or_else(|| ProviderError::not_found(format!("server {id}")))?;
    if server.status == ServerStatus::Running {
        Ok(server)
    } else if server.status.is_on() {
        Err(StepError::Wait {
            reason: format!("server {id} is {:?}, not running yet", server.status),
            after: LOOK_AGAIN,
        })
    } else {
        Err(ProviderError::permanent(format!(
            "server {id} is {:?} instead of starting",
            server.status
        ))
        .into())
    }
}

/// Asks the server's OS to shut down; the output is when (the grace runs from there).
pub(super) async fn shutdown(cx: &StepCx<'_>, servers: &Arc<dyn Servers>, id: &str) -> StepResult {
    servers.shutdown(id).await?;
    Ok(Some(Value::from(cx.app.clock.now().as_millis())))
}

/// Done once the server is off. Until the grace since the `shutdown` step is over the OS is
/// given time; then the power is cut, as a cloud's console would, and the step looks again
/// until it is off.
pub(super) async fn off(cx: &StepCx<'_>, servers: &Arc<dyn Servers>, id: &str) -> StepResult {
    off_after(cx, servers, id, "shutdown").await
}

/// [`off`], with the grace running from what the step `shutdown_step` output.
pub(super) async fn off_after(
    cx: &StepCx<'_>,
    servers: &Arc<dyn Servers>,
    id: &str,
    shutdown_step: &str,
) -> StepResult {
    let on = servers
        .get_server(id)
        .await?
        .is_some_and(|server| server.status.is_on());
    if !on {
        return Ok(None);
    }
    // A job an earlier release started has no instant recorded: its creation will do.
    let asked_at = cx
        .outputs
        .get(shutdown_step)
        .and_then(Value::as_i64)
        .unwrap_or(cx.job.created_at);
    let left = asked_at + millis(cx.app.settings.stop_grace) - cx.app.clock.now().as_millis();
    if left > 0 {
        return Err(StepError::Wait {
            reason: format!("server {id} is shutting down"),
            after: LOOK_AGAIN.min(Duration::from_millis(left.unsigned_abs())),
        });
    }
    servers.power_off(id).await?;
    Err(StepError::Wait {
        reason: format!("server {id} did not shut down within the grace; its power was cut"),
        after: LOOK_AGAIN,
    })
}
