//! Starting an Agent: power its server on (it boots its pinned image: a server's disk is the
//! image it was created from), then wait until the provider reports it running.

use async_trait::async_trait;
use control_api::agents::PeriodState;

use super::agent::{self, agent, cloud, server_id};
use super::{JobKind, Outputs, Step, StepCx, StepFuture, StepResult};
use crate::app::App;
use crate::error::Error;
use crate::providers::ProviderError;
use crate::store::{JobRow, Tx};

pub(super) struct AgentStart;

const STEPS: &[Step] = &[
    Step {
        name: "power_on",
        run: power_on,
    },
    Step {
        name: "running",
        run: running,
    },
];

fn power_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let id = server_id(cx, &agent)
            .await?
            .ok_or_else(|| ProviderError::permanent(format!("agent {} has no VM", agent.id)))?;
        cloud(cx.app, &agent)?.servers.power_on(&id).await?;
        Ok(None)
    })
}

fn running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move { wait_running(cx).await })
}

/// Done once the provider reports the Agent's server running; until then a transient error,
/// so the runner looks again after its backoff.
pub(super) async fn wait_running(cx: &StepCx<'_>) -> StepResult {
    let agent = agent(cx).await?;
    let id = server_id(cx, &agent)
        .await?
        .ok_or_else(|| ProviderError::permanent(format!("agent {} has no VM", agent.id)))?;
    let server = cloud(cx.app, &agent)?
        .servers
        .get_server(&id)
        .await?
        .ok_or_else(|| ProviderError::not_found(format!("server {id}")))?;
    if server.status == crate::providers::ServerStatus::Running {
        Ok(None)
    } else if server.status.is_on() {
        Err(ProviderError::transient(format!(
            "server {id} is {:?}, not running yet",
            server.status
        ))
        .into())
    } else {
        Err(ProviderError::permanent(format!(
            "server {id} is {:?} instead of starting",
            server.status
        ))
        .into())
    }
}

#[async_trait]
impl JobKind for AgentStart {
    fn steps(&self) -> &'static [Step] {
        STEPS
    }

    async fn conclude(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        outputs: &Outputs,
    ) -> Result<bool, Error> {
        agent::conclude(app, tx, job, outputs, Some(PeriodState::Running)).await
    }

    async fn give_up(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        message: &str,
    ) -> Result<(), Error> {
        agent::give_up(app, tx, job, message).await
    }
}
