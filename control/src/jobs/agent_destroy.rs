//! Destroying an Agent: delete its server (the recorded one, or the one carrying its labels
//! if provisioning never recorded it); a server that is gone already is done.

use super::agent::{AgentJob, agent, cloud, server_id};
use super::{Step, StepCx, StepFuture};
use crate::providers::ErrorKind;

pub(super) static KIND: AgentJob = AgentJob {
    steps: &[Step {
        name: "delete_server",
        run: delete_server,
    }],
    to: None,
};

fn delete_server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let agent = agent(cx).await?;
        let Some(id) = server_id(cx, &agent).await? else {
            return Ok(None);
        };
        match cloud(cx.app, &agent)?.servers.delete_server(&id).await {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            other => other.map(|()| None).map_err(Into::into),
        }
    })
}
