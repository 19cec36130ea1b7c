//! Provisioning an Agent: its server, created with its first-boot document (after arming its
//! single-use bootstrap token) or adopted when an earlier attempt made it, then running.
//! Tunnels, firewalls and volumes join as steps with the clouds that have them.

use std::collections::BTreeMap;

use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;
use serde_json::Value;

use super::agent::{AgentJob, agent, cloud};
use super::agent_start::wait_running;
use super::{Step, StepCx, StepError, StepFuture};
use crate::app::App;
use crate::clock::millis;
use crate::cloud_init::{self, AgentIdentity};
use crate::error::Error;
use crate::ingest::new_bootstrap_token;
use crate::providers::{ErrorKind, ProviderError, Secret, ServerSpec, resource_labels};
use crate::store::{AgentRow, StoreError};

pub(super) static KIND: AgentJob = AgentJob {
    steps: &[
        Step {
            name: "server",
            run: server,
        },
        Step {
            name: "running",
            run: running,
        },
    ],
    to: Some(PeriodState::Running),
};

/// Finds the Agent's server by its labels, or arms a bootstrap token and creates it.
fn server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let servers = &cloud(cx.app, &agent)?.servers;
        let labels = resource_labels(ResourceKind::Agent, &agent.id);
        if let Some(found) = servers.list_servers(&labels, None).await?.items.first() {
            return Ok(Some(Value::String(found.id.clone())));
        }
        let spec = ServerSpec {
            // Server names are hostnames: no underscores, no capitals.
            name: agent.id.replace('_', "-").to_ascii_lowercase(),
            image: agent.image_ref.clone(),
            server_type: None,
            location: None,
            labels: labels.clone(),
            user_data: Some(first_boot(cx.app, &agent).await?),
            firewall_ids: Vec::new(),
            volume_ids: Vec::new(),
        };
        match servers.create_server(&spec).await {
            Ok(created) => Ok(Some(Value::String(created.id))),
            // Made by an attempt that died before its lookup could see it: adopt it.
            Err(e) if e.kind == ErrorKind::Conflict => {
                let found = servers.list_servers(&labels, None).await?;
                let adopted = found.items.first().ok_or(e)?;
                Ok(Some(Value::String(adopted.id.clone())))
            }
            Err(e) => Err(e.into()),
        }
    })
}

fn running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(wait_running(cx))
}

/// Arms a new single-use bootstrap token (only its hash is stored) and renders the Agent's
/// first-boot document around it. Called only when the lookup by labels found no server; the
/// unused token it replaces stays good beside it, for a server an earlier attempt made that
/// the lookup could not see yet (the create then conflicts and adopts it). A token a VM has
/// spent is never re-armed (the step fails: re-bootstrapping is an operator's decision).
async fn first_boot(app: &App, agent: &AgentRow) -> Result<Secret, StepError> {
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
            .unwrap_or_else(|| agent.image_ref.clone()),
    };
    cloud_init::agent_document(&identity, &Secret(token))
        .map_err(|e| ProviderError::permanent(format!("agent {} user data: {e}", agent.id)).into())
}
