//! Provisioning an Agent: on a cloud that has them, its own firewall (no inbound rule at all:
//! an Agent has zero inbound ports) and its volume (the slice, ext4); then its server, with
//! both attached and its first-boot document (after arming its single-use bootstrap token);
//! then running. On a job's first run each is made at once (a name taken means an earlier
//! attempt made it: it is found by our labels and adopted); on a later run it is looked up
//! first. Tunnels join as a step with the tunnel provider.

use std::collections::BTreeMap;

use control_api::agent_config::CloneFromToml;
use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;
use serde_json::Value;

use super::agent::{AgentJob, agent, cloud, hostname, provider_name};
use super::agent_start::wait_running;
use super::{Step, StepCx, StepError, StepFuture, find_or_make};
use crate::app::App;
use crate::clock::millis;
use crate::cloud_init::{self, AgentFirstBoot, AgentIdentity};
use crate::error::Error;
use crate::ingest::new_bootstrap_token;
use crate::providers::{
    ErrorKind, FirewallSpec, ProviderError, Secret, ServerSpec, VolumeSpec, resource_labels,
};
use crate::store::{AgentRow, StoreError};

pub(super) static KIND: AgentJob = AgentJob {
    steps: &[
        Step {
            name: "tunnel",
            run: tunnel,
        },
        Step {
            name: "firewall",
            run: firewall,
        },
        Step {
            name: "volume",
            run: volume,
        },
        Step {
            name: "server",
            run: server,
        },
        Step {
            name: "running",
            run: running,
        },
    ],
    undo: super::agent_destroy::RELEASE,
    to: Some(PeriodState::Running),
};

/// The Agent's own tunnel, where tunnels are made per Agent, routing its hostname to its
/// service: the only way in.
pub(super) fn tunnel<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some(tunnels) = cx.app.providers.tunnels() else {
            return Ok(None);
        };
        let agent = agent(cx).await?;
        let name = provider_name(&agent);
        let found = if cx.first_try() {
            None
        } else {
            tunnels.find_tunnel(&name).await?
        };
        let id = match found {
            Some(found) => found.id,
            None => match tunnels.create_tunnel(&name).await {
                Ok(made) => made.id,
                Err(e) if e.kind == ErrorKind::Conflict => {
                    tunnels.find_tunnel(&name).await?.ok_or(e)?.id
                }
                Err(e) => return Err(e.into()),
            },
        };
        tunnels
            .route(
                &id,
                &hostname(cx.app, &agent),
                &cx.app.settings.tunnel_service,
            )
            .await?;
        Ok(Some(Value::String(id)))
    })
}

/// The Agent's firewall, on a cloud that has firewalls: no rule, so nothing gets in.
pub(super) fn firewall<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(firewalls) = &cloud(cx.app, &agent)?.firewalls else {
            return Ok(None);
        };
        let labels = resource_labels(ResourceKind::Agent, &agent.id);
        let spec = FirewallSpec {
            name: provider_name(&agent),
            labels: labels.clone(),
            rules: Vec::new(),
        };
        let selector = &labels;
        let find = move || async move {
            let found = firewalls.list_firewalls(selector, None).await?;
            Ok(found.items.into_iter().next().map(|f| f.id))
        };
        find_or_make(cx, find, async {
            Ok(firewalls.create_firewall(&spec).await?.id)
        })
        .await
    })
}

/// The Agent's slice, on a cloud that has volumes: formatted ext4 (the image mounts it at
/// `/data` by its filesystem label), so it outlives stops and server replacement.
pub(super) fn volume<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(volumes) = &cloud(cx.app, &agent)?.volumes else {
            return Ok(None);
        };
        let labels = resource_labels(ResourceKind::Agent, &agent.id);
        let spec = VolumeSpec {
            name: format!("{}-slice", provider_name(&agent)),
            size_gb: cx.app.settings.slice_size_gb,
            location: None,
            labels: labels.clone(),
            format: Some("ext4".to_owned()),
        };
        let selector = &labels;
        let find = move || async move {
            let found = volumes.list_volumes(selector, None).await?;
            Ok(found.items.into_iter().next().map(|v| v.id))
        };
        find_or_make(cx, find, async {
            Ok(volumes.create_volume(&spec).await?.id)
        })
        .await
    })
}

/// Finds the Agent's server by its labels, or arms a bootstrap token and creates it with the
/// firewall and volume the steps before made.
pub(super) fn server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let servers = &cloud(cx.app, &agent)?.servers;
        let labels = resource_labels(ResourceKind::Agent, &agent.id);
        let selector = &labels;
        let find = move || async move {
            let found = servers.list_servers(selector, None).await?;
            Ok(found.items.into_iter().next().map(|s| s.id))
        };
        // Only when no server can exist yet: a bootstrap token is armed for it.
        let make = async {
            let made_before = |step: &str| cx.output(step).map(str::to_owned).into_iter().collect();
            let tunnel_token = match (cx.app.providers.tunnels(), cx.output("tunnel")) {
                (Some(tunnels), Some(tunnel)) => Some(tunnels.tunnel_token(tunnel).await?),
                _ => None,
            };
            let spec = ServerSpec {
                name: provider_name(&agent),
                image: agent.image_ref.clone(),
                server_type: None,
                location: None,
                labels: labels.clone(),
                user_data: Some(
                    first_boot(
                        cx.app,
                        &agent,
                        tunnel_token,
                        super::agent_clone::clone_from(cx)?,
                    )
                    .await?,
                ),
                firewall_ids: made_before("firewall"),
                volume_ids: made_before("volume"),
            };
            Ok(servers.create_server(&spec).await?.id)
        };
        find_or_make(cx, find, make).await
    })
}

pub(super) fn running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(wait_running(cx))
}

/// Arms a new single-use bootstrap token (only its hash is stored) and renders the Agent's
/// first-boot document around it (with where a clone copies its slice from, for a clone
/// whose copy is made on its VM). Called only when no server can exist yet (a first run) or
/// the lookup by labels found none; the
/// unused token it replaces stays good beside it, for a server an earlier attempt made that
/// the lookup could not see yet (the create then conflicts and adopts it). A token a VM has
/// spent is never re-armed (the step fails: re-bootstrapping is an operator's decision).
async fn first_boot(
    app: &App,
    agent: &AgentRow,
    tunnel_token: Option<Secret>,
    clone_from: Option<CloneFromToml>,
) -> Result<Secret, StepError> {
    let (token, hash) = new_bootstrap_token().map_err(Error::from)?;
    let now = app.clock.now().as_millis();
    let expires = now + millis(app.settings.ingest.bootstrap_ttl);
    let mut tx = app.store.write().await?;
    let armed = tx.put_bootstrap(&agent.id, &hash, now, expires).await?;
    tx.commit().await?;
    if !armed {
        return Err(ProviderError::permanent(format!(
            "agent {} has no server, but its VM traded its bootstrap token already; \
             re-bootstrapping it is an operator's decision (POST /api/agents/{}/bootstrap-token)",
            agent.id, agent.id
        ))
        .into());
    }
    let env: BTreeMap<String, String> = serde_json::from_str(&agent.env)
        .map_err(|e| StoreError::Corrupt(format!("agent {} env: {e}", agent.id)))?;
    let identity = AgentIdentity {
        agent_id: agent.id.clone(),
        image_version: env
            .get("PLATFORM_RELEASE")
            .cloned()
            .unwrap_or_else(|| agent.image_version.clone()),
    };
    cloud_init::agent_document(&AgentFirstBoot {
        identity,
        control_url: app.settings.control_url.clone(),
        bootstrap_token: Secret(token),
        tunnel_token,
        clone_from,
    })
    .map_err(|e| ProviderError::permanent(format!("agent {} user data: {e}", agent.id)).into())
}
