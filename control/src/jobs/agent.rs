//! What the Agent job kinds share: [`AgentJob`], a kind as its steps and the state its
//! success leaves the Agent in; the Agent's row, cloud and server; and how an operation's end
//! is recorded on the Agent (through `agents::record_observed`, the one owner of its state).

use control_api::agents::{AgentState, PeriodState};
use control_api::usage::ResourceKind;
use serde_json::Value;
use tracing::info;

use std::sync::Arc;

use async_trait::async_trait;

use super::{JobKind, Outputs, Step, StepCx, StepError, server};
use crate::agents::{self, Cas};
use crate::app::App;
use crate::error::Error;
use crate::providers::{Cloud, ProviderError, Servers};
use crate::store::{AgentRow, JobRow, OperationOutcome, StoreError, Tx};

/// An Agent job kind: its steps, what undoes them, and the state the Agent is in once they
/// are done (`None`: destroyed).
pub(super) struct AgentJob {
    pub(super) steps: &'static [Step],
    /// What releases the resources `steps` made, should the job fail for good.
    pub(super) undo: &'static [Step],
    pub(super) to: Option<PeriodState>,
}

#[async_trait]
impl JobKind for AgentJob {
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
        _released: bool,
    ) -> Result<(), Error> {
        give_up(app, tx, job, message).await
    }
}

/// The Agent the job is about.
pub(super) async fn agent(cx: &StepCx<'_>) -> Result<AgentRow, StepError> {
    let id = &cx.job.resource_id;
    Ok(cx.app.store.read().await?.agent(id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("job {} names unknown agent {id}", cx.job.id))
    })?)
}

/// The cloud the Agent lives on.
pub(super) fn cloud<'a>(app: &'a App, agent: &AgentRow) -> Result<&'a Cloud, StepError> {
    server::cloud_named(app, &agent.provider)
}

/// The Agent's server: the id an earlier step found or made, else the one recorded, else the
/// one carrying its labels (a provisioning that died before recording it).
pub(super) async fn server_id(
    cx: &StepCx<'_>,
    agent: &AgentRow,
) -> Result<Option<String>, StepError> {
    let cloud = cloud(cx.app, agent)?;
    let recorded = agent.provider_id.as_deref();
    server::server_id(cx, cloud, recorded, ResourceKind::Agent, &agent.id).await
}

/// The name the Agent's resources carry at the provider.
pub(super) fn provider_name(agent: &AgentRow) -> String {
    server::provider_name(&agent.id)
}

/// The hostname the Agent is reached at through its tunnel.
pub(super) fn hostname(app: &App, agent: &AgentRow) -> String {
    format!("{}.{}", provider_name(agent), app.settings.agent_domain)
}

/// The Agent, the id of its server, and the servers of its cloud, for a step that needs the
/// server to exist.
pub(super) async fn agent_server<'a>(
    cx: &StepCx<'a>,
) -> Result<(AgentRow, String, &'a Arc<dyn Servers>), StepError> {
    let agent = agent(cx).await?;
    let id = server_id(cx, &agent)
        .await?
        .ok_or_else(|| ProviderError::permanent(format!("agent {} has no VM", agent.id)))?;
    let servers = &cloud(cx.app, &agent)?.servers;
    Ok((agent, id, servers))
}

/// Ends the Agent's operation as the provider confirmed it: `to` from now on (`None`:
/// destroyed), with its server recorded.
pub(super) async fn conclude(
    app: &App,
    tx: &mut Tx,
    job: &JobRow,
    outputs: &Outputs,
    to: Option<PeriodState>,
) -> Result<bool, Error> {
    let cas = Cas::Concluded {
        operation: job.kind,
        provider_id: outputs.get("server").and_then(Value::as_str),
        to,
    };
    let recorded = agents::record_observed(
        tx,
        app.ingest.records().clone(),
        &job.resource_id,
        cas,
        app.clock.now(),
    )
    .await?;
    if let Some(recorded) = &recorded {
        let state = to.map_or(AgentState::Destroyed, AgentState::from);
        let (job, owner) = (job.clone(), recorded.owner.clone());
        // Said once it is true: a job whose lease was lost rolls this back.
        tx.after_commit(move || {
            info!(
                request_id = %job.request_id.as_deref().unwrap_or("-"),
                account_id = %owner,
                agent_id = %job.resource_id,
                job_id = %job.id,
                operation = ?job.kind,
                state = ?state,
                "agent operation confirmed by the provider"
            );
        });
    }
    Ok(recorded.is_some())
}

/// Ends the Agent's operation as failed: it keeps its state and shows the error.
pub(super) async fn give_up(
    app: &App,
    tx: &mut Tx,
    job: &JobRow,
    message: &str,
) -> Result<(), Error> {
    let outcome = OperationOutcome {
        error: Some(message),
        ..OperationOutcome::default()
    };
    let now = app.clock.now().as_millis();
    tx.finish_operation(&job.resource_id, job.kind, &outcome, now)
        .await?;
    agents::forget_after_commit(app, tx, &job.resource_id);
    Ok(())
}
