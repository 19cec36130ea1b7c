//! The job runner: claims due jobs with a lease (any replica may), runs each job's steps in
//! order from the one it reached, commits each step's output before the next, retries what a
//! later attempt may fix with jittered exponential backoff (never sooner than the provider's
//! `retry_after`), and gives up with a clear error once the attempts are spent — after
//! running the kind's undo steps, if it has any, the same way. A step the provider's request
//! budget held back waits its turn without spending an attempt. It knows nothing about what
//! the steps do.

use tracing::{debug, warn};

use serde_json::Value;

use super::{JobKind, Outputs, Step, StepCx, StepError, StepResult, kind_of};
use crate::app::App;
use crate::backoff::{jitter, retry_delay};
use crate::clock::millis;
use crate::error::Result;
use crate::providers::{ErrorKind, ProviderError};
use crate::store::{JobRow, StoreError};

/// Races for a due job this replica may lose in a row before waiting for the next poll.
const LOST_RACES: u32 = 3;

/// The output that marks a job unwinding, holding why it failed; its undo steps' outputs are
/// kept under `undo:<step>`, beside the outputs of the steps they undo.
const UNDO: &str = "undo";

/// Runs every job that is due now, one after another, and returns how many ran. Safe on any
/// number of replicas at once: each job is claimed with a lease first.
pub async fn run_due(app: &App) -> Result<usize> {
    let mut ran = 0;
    let mut lost_races = 0;
    loop {
        let now = app.clock.now().as_millis();
        let lease_until = now + millis(app.settings.job_lease);
        // A lease held by a replica silent this long is taken over at once: it is gone.
        let silent_before = now - millis(app.settings.ingest.replica_timeout);
        let mut tx = app.store.write().await?;
        let claimed = tx
            .claim_job(&app.replica_id, now, lease_until, silent_before)
            .await?;
        let Some(job) = claimed else {
            // Another replica may have won the race for the job we aimed at while others are
            // still due: look again a few times before waiting for the next poll.
            let due = tx.next_job_due().await?.is_some_and(|at| at <= now);
            drop(tx);
            lost_races += 1;
            if due && lost_races <= LOST_RACES {
                continue;
            }
            break;
        };
        tx.commit().await?;
        let kind = kind_of(&job);
        if job.attempts > app.settings.job_max_attempts {
            // Whatever keeps failing (a transient provider error or our own), stop.
            let message = format!("gave up after {} attempts", job.attempts - 1);
            give_up(app, &job, kind, &outputs_of(&job)?, &message).await?;
        } else {
            run(app, &job, kind).await?;
        }
        ran += 1;
    }
    Ok(ran)
}

/// The outputs the job's finished steps recorded.
pub(super) fn outputs_of(job: &JobRow) -> Result<Outputs> {
    Ok(serde_json::from_str(&job.outputs)
        .map_err(|e| StoreError::Corrupt(format!("job {} outputs: {e}", job.id)))?)
}

/// Runs the job's steps from the one it reached (its undo steps, if it is unwinding).
async fn run(app: &App, job: &JobRow, kind: &dyn JobKind) -> Result<()> {
    let mut outputs = outputs_of(job)?;
    let failure = outputs.get(UNDO).and_then(Value::as_str).map(str::to_owned);
    let (steps, prefix) = match failure {
        Some(_) => (kind.undo(), "undo:"),
        None => (kind.steps(), ""),
    };
    // Steps are done by name, not by count: a job an earlier release queued resumes where it
    // was even when this release adds steps before that one (those run; the done ones not).
    let mut reached = 0;
    while let Some(step) = steps.get(reached) {
        let key = format!("{prefix}{}", step.name);
        if outputs.contains_key(&key) {
            reached += 1;
            continue;
        }
        let cx = StepCx {
            app,
            job,
            outputs: &outputs,
            replay: false,
        };
        let output = match run_step(app, job, step, &cx).await? {
            Ok(output) => output,
            Err(error) => return failed(app, job, kind, step.name, &outputs, &error).await,
        };
        crate::failpoint::hit(&format!("job-step:{key}"));
        outputs.insert(key, output.unwrap_or_default());
        reached += 1;
        let encoded = Value::Object(outputs.clone()).to_string();
        let mut tx = app.store.write().await?;
        let step_count = i64::try_from(reached).unwrap_or(i64::MAX);
        if !tx
            .record_job_step(&job.id, &app.replica_id, step_count, &encoded)
            .await?
        {
            warn!(job_id = %job.id, step = step.name, "job lease lost; leaving the job to its new holder");
            return Ok(());
        }
        tx.commit().await?;
    }
    if let Some(failure) = failure {
        let message = format!("{failure} (what it had made is released)");
        return close(app, job, kind, true, &message).await;
    }
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    if !kind.conclude(app, &mut tx, job, &outputs).await? {
        // The operation was concluded already; close the job so it is not run again.
        tx.finish_job(
            &job.id,
            &app.replica_id,
            false,
            Some("operation already concluded"),
            now,
        )
        .await?;
        tx.commit().await?;
        warn!(job_id = %job.id, resource_id = %job.resource_id, "operation was already concluded; job closed");
        return Ok(());
    }
    if !tx
        .finish_job(&job.id, &app.replica_id, false, None, now)
        .await?
    {
        // Our lease ran out and another replica holds the job now: roll back, let it conclude.
        warn!(job_id = %job.id, resource_id = %job.resource_id, "job lease lost; leaving the result to its new holder");
        return Ok(());
    }
    tx.commit().await?;
    debug!(job_id = %job.id, resource_id = %job.resource_id, "job done");
    Ok(())
}

/// Runs one step under the job's lease; with `replay_steps`, twice, the second run required
/// to change nothing.
async fn run_step(app: &App, job: &JobRow, step: &Step, cx: &StepCx<'_>) -> Result<StepResult> {
    let output = match with_lease(app, job, (step.run)(cx)).await? {
        Ok(output) => output,
        Err(error) => return Ok(Err(error)),
    };
    if !app.settings.replay_steps {
        return Ok(Ok(output));
    }
    // As if we had died before recording the step: it must find what it made, not make more.
    let cx = StepCx {
        replay: true,
        ..*cx
    };
    let again = match with_lease(app, job, (step.run)(&cx)).await? {
        Ok(again) => again,
        Err(error) => return Ok(Err(error)),
    };
    if again != output {
        let error = ProviderError::permanent(format!(
            "step {} is not idempotent: it gave {output:?}, then {again:?}",
            step.name
        ));
        return Ok(Err(error.into()));
    }
    Ok(Ok(output))
}

/// A step failed: retry later if that may help and attempts remain, else give up.
async fn failed(
    app: &App,
    job: &JobRow,
    kind: &dyn JobKind,
    step: &str,
    outputs: &Outputs,
    error: &StepError,
) -> Result<()> {
    let (retryable, retry_after) = match error {
        // Refused before acting because the request budget is spent: not the step failing.
        // It waits its turn (as long as the provider asked, jittered) without spending an
        // attempt, however long the budget stays spent: the budget always comes back.
        StepError::Provider(e) if e.kind == ErrorKind::RateLimited => {
            let after = retry_delay(
                app.settings.job_retry_base,
                app.settings.job_retry_cap,
                1,
                e.retry_after,
                jitter(),
            );
            return postpone(app, job, step, &format!("waiting: {e}"), after).await;
        }
        StepError::Provider(e) => (e.is_retryable(), e.retry_after),
        StepError::Control(_) => (true, None),
        StepError::Progress { after, .. } => {
            return postpone(app, job, step, &error.to_string(), *after).await;
        }
        StepError::Wait { after, .. } => {
            let waited = app.clock.now().as_millis() - job.created_at;
            if waited < millis(app.settings.job_wait_limit) {
                return postpone(app, job, step, &error.to_string(), *after).await;
            }
            (true, None)
        }
    };
    if !retryable || job.attempts >= app.settings.job_max_attempts {
        return give_up(app, job, kind, outputs, &error.to_string()).await;
    }
    let delay = retry_delay(
        app.settings.job_retry_base,
        app.settings.job_retry_cap,
        job.attempts,
        retry_after,
        jitter(),
    );
    let message = error.to_string();
    let mut tx = app.store.write().await?;
    tx.retry_job(
        &job.id,
        &app.replica_id,
        app.clock.now().as_millis() + millis(delay),
        &message,
    )
    .await?;
    tx.commit().await?;
    warn!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        resource_id = %job.resource_id,
        job_id = %job.id,
        step,
        attempt = job.attempts,
        retry_in_ms = millis(delay),
        error = %message,
        "job step failed; will retry"
    );
    Ok(())
}

/// Runs the job again after `after`, this run not counted as an attempt; `note` (what it
/// waits for, or how far it got) is the job's message meanwhile.
async fn postpone(
    app: &App,
    job: &JobRow,
    step: &str,
    note: &str,
    after: std::time::Duration,
) -> Result<()> {
    let mut tx = app.store.write().await?;
    tx.postpone_job(
        &job.id,
        &app.replica_id,
        app.clock.now().as_millis() + millis(after),
        note,
    )
    .await?;
    tx.commit().await?;
    debug!(
        resource_id = %job.resource_id,
        job_id = %job.id,
        step,
        look_again_in_ms = millis(after),
        note,
        "job step waiting"
    );
    Ok(())
}

/// The job failed for good: unwind it first if its kind can release what it made (due now,
/// with fresh attempts), else record the failure. A failure while unwinding is recorded with
/// the one that started it.
async fn give_up(
    app: &App,
    job: &JobRow,
    kind: &dyn JobKind,
    outputs: &Outputs,
    message: &str,
) -> Result<()> {
    if let Some(failure) = outputs.get(UNDO).and_then(Value::as_str) {
        let message = format!("{failure} (releasing what it had made failed too: {message})");
        return close(app, job, kind, false, &message).await;
    }
    if kind.undo().is_empty() {
        return close(app, job, kind, false, message).await;
    }
    let mut outputs = outputs.clone();
    outputs.insert(UNDO.to_owned(), Value::String(message.to_owned()));
    let encoded = Value::Object(outputs).to_string();
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    tx.unwind_job(&job.id, &app.replica_id, &encoded, now, message)
        .await?;
    tx.commit().await?;
    warn!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        resource_id = %job.resource_id,
        job_id = %job.id,
        operation = ?job.kind,
        error = %message,
        "job failed; releasing what it had made before recording the failure"
    );
    Ok(())
}

/// Ends the job as failed for good; its resource learns of it, and whether the undo steps
/// released what the job had made. Only the lease holder may do so: without the lease,
/// nothing changes.
async fn close(
    app: &App,
    job: &JobRow,
    kind: &dyn JobKind,
    released: bool,
    message: &str,
) -> Result<()> {
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    kind.give_up(app, &mut tx, job, message, released).await?;
    if !tx
        .finish_job(&job.id, &app.replica_id, true, Some(message), now)
        .await?
    {
        warn!(job_id = %job.id, resource_id = %job.resource_id, "job lease lost; leaving the failure to its new holder");
        return Ok(());
    }
    tx.commit().await?;
    warn!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        resource_id = %job.resource_id,
        job_id = %job.id,
        operation = ?job.kind,
        error = %message,
        "job failed"
    );
    Ok(())
}

/// Runs `work` while renewing the job's lease every third of its length, so a long provider
/// call is not taken over by another replica.
async fn with_lease<T>(app: &App, job: &JobRow, work: impl Future<Output = T>) -> Result<T> {
    let period = app.settings.job_lease / 3;
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            () = tokio::time::sleep(period) => {
                let until = app.clock.now().as_millis() + millis(app.settings.job_lease);
                let mut tx = app.store.write().await?;
                let renewed = tx.renew_job_lease(&job.id, &app.replica_id, until).await?;
                tx.commit().await?;
                if !renewed {
                    warn!(job_id = %job.id, "job lease lost during a step; its result will be dropped");
                }
            }
        }
    }
}
