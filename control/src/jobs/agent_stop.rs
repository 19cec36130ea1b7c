//! Stopping an Agent: an ACPI shutdown (its vm-agent drains cloudflared), then waiting for
//! the server to be off; a hard power-off if it is still on after the stop grace.

use std::time::Duration;

use control_api::agents::PeriodState;
use serde_json::Value;

use super::agent::{AgentJob, agent_server};
use super::{Step, StepCx, StepError, StepFuture};
use crate::clock::millis;

/// How often a stop looks whether the server is off yet.
const LOOK_AGAIN: Duration = Duration::from_secs(5);

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

/// Asks the OS to shut down; the output is when (the grace runs from there).
fn shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        servers.shutdown(&id).await?;
        Ok(Some(Value::from(cx.app.clock.now().as_millis())))
    })
}

/// Done once the server is off. Until the grace is over the OS is given time; then the
/// power is cut, as a cloud's console would, and the step looks again until it is off.
fn off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (_, id, servers) = agent_server(cx).await?;
        let on = servers
            .get_server(&id)
            .await?
            .is_some_and(|server| server.status.is_on());
        if !on {
            return Ok(None);
        }
        // A job an earlier release started has no instant recorded: its creation will do.
        let asked_at = cx
            .outputs
            .get("shutdown")
            .and_then(Value::as_i64)
            .unwrap_or(cx.job.created_at);
        let left = asked_at + millis(cx.app.settings.stop_grace) - cx.app.clock.now().as_millis();
        if left > 0 {
            return Err(StepError::Wait {
                reason: format!("server {id} is shutting down"),
                after: LOOK_AGAIN.min(Duration::from_millis(left.unsigned_abs())),
            });
        }
        servers.power_off(&id).await?;
        Err(StepError::Wait {
            reason: format!("server {id} did not shut down within the grace; its power was cut"),
            after: LOOK_AGAIN,
        })
    })
}
