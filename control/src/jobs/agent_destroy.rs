//! Destroying an Agent: delete its server (the recorded one, or the one carrying its labels
//! if provisioning never recorded it), then its volume and its firewall (found by our labels;
//! Hetzner detaches both when the server goes, and refuses to delete them before), then its
//! tunnel and DNS record. Whatever is gone already is done.

use control_api::usage::ResourceKind;

use super::agent::{AgentJob, agent, cloud, hostname, provider_name, server_id};
use super::{Step, StepCx, StepFuture, server};
use crate::providers::{deleted, resource_labels};

pub(super) static KIND: AgentJob = AgentJob {
    steps: RELEASE,
    undo: &[],
    to: None,
};

/// Deleting whatever of the Agent's exists, in dependency order: also what undoes a
/// provisioning that failed for good.
pub(super) const RELEASE: &[Step] = &[
    Step {
        name: "delete_server",
        run: delete_server,
    },
    Step {
        name: "delete_volume",
        run: delete_volume,
    },
    Step {
        name: "delete_firewall",
        run: delete_firewall,
    },
    Step {
        name: "delete_tunnel",
        run: delete_tunnel,
    },
];

pub(super) fn delete_server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(id) = server_id(cx, &agent).await? else {
            return Ok(None);
        };
        deleted(cloud(cx.app, &agent)?.servers.delete_server(&id).await)?;
        Ok(None)
    })
}

pub(super) fn delete_volume<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(volumes) = &cloud(cx.app, &agent)?.volumes else {
            return Ok(None);
        };
        let labels = resource_labels(ResourceKind::Agent, &agent.id);
        for volume in volumes.list_volumes(&labels, None).await?.items {
            deleted(volumes.delete_volume(&volume.id).await)?;
        }
        Ok(None)
    })
}

pub(super) fn delete_firewall<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(firewalls) = &cloud(cx.app, &agent)?.firewalls else {
            return Ok(None);
        };
        server::delete_firewalls(firewalls, ResourceKind::Agent, &agent.id).await?;
        Ok(None)
    })
}

/// The Agent's tunnel and its DNS record, once its server is gone.
pub(super) fn delete_tunnel<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some(tunnels) = cx.app.providers.tunnels() else {
            return Ok(None);
        };
        let agent = agent(cx).await?;
        deleted(
            tunnels
                .delete_tunnel(&provider_name(&agent), &hostname(cx.app, &agent))
                .await,
        )?;
        Ok(None)
    })
}
