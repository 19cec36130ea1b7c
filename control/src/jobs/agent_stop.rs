//! Stopping an Agent: an ACPI shutdown (its vm-agent drains cloudflared), then waiting for
//! the server to be off; a hard power-off if it is still on after the stop grace.

use control_api::agents::PeriodState;

use super::agent::{AgentJob, agent_server};
use super::{Step, StepCx, StepFuture, server};

pub(super) static KIND: AgentJob = AgentJob {
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

fn shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        server::shutdown(cx, servers, &id).await
    })
}

fn off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        server::off(cx, servers, &id).await
    })
}
