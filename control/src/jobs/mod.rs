//! Durable provider work. A job belongs to one resource (kind + id) and is a named list of
//! steps, like omicron's sagas: each step is an idempotent action whose output the next steps
//! read, and each finished step's output is committed before the next starts, so a job killed
//! anywhere resumes at the step it was on. A step looks its resource up by our labels before
//! creating it, adopts it on a uniqueness conflict, and takes "not found" on delete as done.
//!
//! [`runner`] claims due jobs with a lease, runs their steps, retries with jittered backoff
//! honouring the provider's `retry_after`, and gives up with a clear error after its budget;
//! it knows nothing about Agents or Plain VMs. A job that fails for good first runs its
//! kind's undo steps, the same way (resumable, retried), then records the failure. Each job kind is one file listing its steps,
//! and knows nothing about leases.
//!
//! May call: the providers, the store, the services' `record_observed`. Called by the
//! background runner and by tests.

mod agent;
mod agent_clone;
mod agent_destroy;
mod agent_provision;
mod agent_start;
mod agent_stop;
mod plain_vm;
mod plain_vm_provision;
mod runner;
mod server;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use control_api::agents::AgentOperation;
use control_api::usage::ResourceKind;
use serde_json::Value;

use crate::app::App;
use crate::error::Error;
use crate::providers::{ErrorKind, ProviderError};
use crate::store::{JobRow, StoreError, Tx};

pub use runner::run_due;

/// What the finished steps produced, by step name.
pub type Outputs = serde_json::Map<String, Value>;

/// What a step sees: the application, its job, and what the steps before it produced.
pub struct StepCx<'a> {
    pub app: &'a App,
    pub job: &'a JobRow,
    pub outputs: &'a Outputs,
    /// Whether this run repeats one that succeeded (`replay_steps`): never a first try.
    pub replay: bool,
}

impl StepCx<'_> {
    /// A text the step `step` produced.
    pub fn output(&self, step: &str) -> Option<&str> {
        self.outputs.get(step).and_then(Value::as_str)
    }

    /// Whether the job is on its first run: no attempt failed, crashed or was taken over by
    /// another replica, so no earlier run of this step can have made anything, and a step may
    /// create without looking up by label first (a uniqueness conflict still adopts). A run
    /// after a postponement still counts as first: jobs are postponed only by a wait after
    /// their creating steps are done, or by a refusal that acted on nothing (a 429).
    pub fn first_try(&self) -> bool {
        self.job.attempts <= 1 && !self.replay
    }
}

/// Why a step did not finish.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The provider refused or failed; its kind decides whether to retry.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Our own failure (the database, a stored value); retried like a transient one.
    #[error(transparent)]
    Control(#[from] Error),
    /// Not a failure: the provider is on its way to what was asked (a server starting, an OS
    /// shutting down). The step runs again after `after` without spending an attempt, until
    /// the job has waited `job_wait_limit` in all.
    #[error("waiting: {reason}")]
    Wait { reason: String, after: Duration },
    /// Not a failure: work that can take long is seen advancing (a clone's slice being
    /// copied, reported in its heartbeats). The step runs again after `after` without
    /// spending an attempt, with no limit: the step itself turns a stall into a `Wait`.
    #[error("in progress: {reason}")]
    Progress { reason: String, after: Duration },
}

impl From<StoreError> for StepError {
    fn from(error: StoreError) -> Self {
        Self::Control(error.into())
    }
}

pub type StepResult = Result<Option<Value>, StepError>;
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = StepResult> + Send + 'a>>;

/// Finds or makes the one resource a creating step is about, and outputs its id. On a job's
/// first run it is made at once (`make` is not run otherwise); on a later run it is looked
/// up (by our labels) first. A name taken (a conflict) means an earlier attempt made it: it
/// is found and adopted.
pub(crate) async fn find_or_make<Found>(
    cx: &StepCx<'_>,
    find: impl Fn() -> Found,
    make: impl Future<Output = Result<String, StepError>>,
) -> StepResult
where
    Found: Future<Output = Result<Option<String>, ProviderError>>,
{
    if !cx.first_try()
        && let Some(id) = find().await?
    {
        return Ok(Some(Value::String(id)));
    }
    let id = match make.await {
        Ok(id) => id,
        Err(StepError::Provider(e)) if e.kind == ErrorKind::Conflict => find().await?.ok_or(e)?,
        Err(e) => return Err(e),
    };
    Ok(Some(Value::String(id)))
}

/// One step: its name (the key of its output) and its action.
pub struct Step {
    pub name: &'static str,
    pub run: for<'a> fn(&'a StepCx<'a>) -> StepFuture<'a>,
}

/// A kind of job: its steps, and how its resource learns how the job ended. `conclude` and
/// `give_up` run inside the transaction that closes the job, before the runner checks its
/// lease, so they change the resource's row first (the lock order everywhere).
#[async_trait]
pub trait JobKind: Send + Sync {
    fn steps(&self) -> &'static [Step];

    /// The steps that release what `steps` made, run when the job fails for good before
    /// its failure is recorded (a provisioning that cannot finish leaves nothing billed
    /// behind). None by default.
    fn undo(&self) -> &'static [Step] {
        &[]
    }

    /// Records what the steps achieved. Returns false, changing nothing, if the resource's
    /// operation was concluded already (by a replica that took the job over).
    async fn conclude(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        outputs: &Outputs,
    ) -> Result<bool, Error>;

    /// Records that the operation failed for good with `message`; `released` says whether the
    /// undo steps ran to their end, so nothing the job made is left at the provider.
    async fn give_up(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        message: &str,
        released: bool,
    ) -> Result<(), Error>;
}

/// The kind of `job`. (A kind this release does not know, queued by a newer one, cannot be
/// read from the database at all: `JobRow` refuses it as corrupt.)
fn kind_of(job: &JobRow) -> &'static dyn JobKind {
    match (job.resource_kind, job.kind) {
        (ResourceKind::Agent, AgentOperation::Provision) if agent_clone::is_clone(job) => {
            &agent_clone::KIND
        }
        (ResourceKind::Agent, AgentOperation::Provision) => &agent_provision::KIND,
        (ResourceKind::Agent, AgentOperation::Start) => &agent_start::KIND,
        (ResourceKind::Agent, AgentOperation::Stop) => &agent_stop::KIND,
        (ResourceKind::Agent, AgentOperation::Destroy) => &agent_destroy::KIND,
        (ResourceKind::PlainVm, AgentOperation::Provision) => &plain_vm_provision::KIND,
        (ResourceKind::PlainVm, AgentOperation::Start) => &plain_vm::START,
        (ResourceKind::PlainVm, AgentOperation::Stop) => &plain_vm::STOP,
        (ResourceKind::PlainVm, AgentOperation::Destroy) => &plain_vm::DESTROY,
    }
}
