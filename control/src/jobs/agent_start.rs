//! Starting an Agent: power its server on (it boots its pinned image: a server's disk is the
//! image it was created from), then wait until the provider reports it running.

use control_api::agents::PeriodState;

use super::agent::{AgentJob, agent_server};
use super::{Step, StepCx, StepFuture, StepResult, server};

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

/// Done once the provider reports the Agent's server running.
pub(super) async fn wait_running(cx: &StepCx<'_>) -> StepResult {
    let (_, id, servers) = agent_server(cx).await?;
    server::running(servers, &id).await?;
    Ok(None)
}
