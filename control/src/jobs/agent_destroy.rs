//! Destroying an Agent: delete its server (the recorded one, or the one carrying its labels
//! if provisioning never recorded it); a server that is gone already is done.

use async_trait::async_trait;

use super::agent::{self, agent, cloud, server_id};
use super::{JobKind, Outputs, Step, StepCx, StepFuture};
use crate::app::App;
use crate::error::Error;
use crate::providers::ErrorKind;
use crate::store::{JobRow, Tx};

pub(super) struct AgentDestroy;

const STEPS: &[Step] = &[Step {
    name: "delete_server",
    run: delete_server,
}];

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

#[async_trait]
impl JobKind for AgentDestroy {
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
        agent::conclude(app, tx, job, outputs, None).await
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
