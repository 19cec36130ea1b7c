//! Stopping an Agent: an ACPI shutdown (its vm-agent drains cloudflared), and a hard power-off
//! if the server is still on when the next step looks.

use control_api::agents::PeriodState;

use super::agent::{AgentJob, agent_server};
use super::{Step, StepCx, StepFuture};

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
    to: Some(PeriodState::Paused),
};

fn shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        servers.shutdown(&id).await?;
        Ok(None)
    })
}

fn off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        let on = servers
            .get_server(&id)
            .await?
            .is_some_and(|server| server.status.is_on());
        if on {
            // The OS did not shut down: cut the power, as a cloud's console would.
            servers.power_off(&id).await?;
        }
        Ok(None)
    })
}
