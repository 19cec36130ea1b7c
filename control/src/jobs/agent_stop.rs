//! Stopping an Agent: an ACPI shutdown (its vm-agent drains cloudflared), and a hard power-off
//! if the server is still on when the next step looks.

use async_trait::async_trait;
use control_api::agents::PeriodState;

use super::agent::{self, agent, cloud, server_id};
use super::{JobKind, Outputs, Step, StepCx, StepFuture};
use crate::app::App;
use crate::error::Error;
use crate::providers::ProviderError;
use crate::store::{JobRow, Tx};

pub(super) struct AgentStop;

const STEPS: &[Step] = &[
    Step {
        name: "shutdown",
        run: shutdown,
    },
    Step {
        name: "off",
        run: off,
    },
];

fn shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let id = server_id(cx, &agent)
            .await?
            .ok_or_else(|| ProviderError::permanent(format!("agent {} has no VM", agent.id)))?;
        cloud(cx.app, &agent)?.servers.shutdown(&id).await?;
        Ok(None)
    })
}

fn off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let id = server_id(cx, &agent)
            .await?
            .ok_or_else(|| ProviderError::permanent(format!("agent {} has no VM", agent.id)))?;
        let servers = &cloud(cx.app, &agent)?.servers;
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

#[async_trait]
impl JobKind for AgentStop {
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
        agent::conclude(app, tx, job, outputs, Some(PeriodState::Paused)).await
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
