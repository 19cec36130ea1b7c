//! Starting an Agent: power its server on (it boots its pinned image: a server's disk is the
//! image it was created from), then wait until the provider reports it running.

use control_api::agents::PeriodState;

use super::agent::{AgentJob, agent_server};
use super::{Step, StepCx, StepError, StepFuture, StepResult};
use crate::providers::{ProviderError, ServerStatus};

pub(super) static KIND: AgentJob = AgentJob {
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

fn power_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        servers.power_on(&id).await?;
        Ok(None)
    })
}

fn running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(wait_running(cx))
}

/// Done once the provider reports the Agent's server running; until then a transient error,
/// so the runner looks again after its backoff.
pub(super) async fn wait_running(cx: &StepCx<'_>) -> StepResult {
    let (_, id, servers) = agent_server(cx).await?;
    let server = servers
        .get_server(&id)
        .await?
        .ok_or_else(|| ProviderError::not_found(format!("server {id}")))?;
    if server.status == ServerStatus::Running {
        Ok(None)
    } else if server.status.is_on() {
        Err(StepError::Wait {
            reason: format!("server {id} is {:?}, not running yet", server.status),
            after: std::time::Duration::from_secs(5),
        })
    } else {
        Err(ProviderError::permanent(format!(
            "server {id} is {:?} instead of starting",
            server.status
        ))
        .into())
    }
}
