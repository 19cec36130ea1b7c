//! Durable provider work, claimed with a lease so any replica may run it and a crashed
//! worker's job is taken over once its lease runs out, or as soon as its replica is known to
//! be gone (silent in `replicas`, or dead per `crate::predecessor`). A job belongs to one resource and
//! records the step it reached and what each finished step produced.

use control_api::agents::AgentOperation;
use control_api::usage::ResourceKind;

use super::{DbText, Result, StoreError, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRow {
    pub id: String,
    pub kind: AgentOperation,
    pub resource_kind: ResourceKind,
    pub resource_id: String,
    pub attempts: i64,
    pub request_id: Option<String>,
    pub created_at: i64,
    /// How many of its steps are done.
    pub step: i64,
    /// JSON object: what each finished step produced, by step name.
    pub outputs: String,
}

#[derive(sqlx::FromRow)]
struct RawJob {
    id: String,
    kind: String,
    resource_kind: String,
    resource_id: String,
    attempts: i64,
    request_id: Option<String>,
    created_at: i64,
    step: i64,
    outputs: String,
}

/// The columns a [`RawJob`] is read from.
macro_rules! job_columns {
    () => {
        "id, kind, resource_kind, resource_id, attempts, request_id, created_at, step, outputs"
    };
}

impl TryFrom<RawJob> for JobRow {
    type Error = StoreError;
    fn try_from(raw: RawJob) -> Result<Self> {
        Ok(Self {
            kind: AgentOperation::from_db(&raw.kind)?,
            resource_kind: ResourceKind::from_db(&raw.resource_kind)?,
            id: raw.id,
            resource_id: raw.resource_id,
            attempts: raw.attempts,
            request_id: raw.request_id,
            created_at: raw.created_at,
            step: raw.step,
            outputs: raw.outputs,
        })
    }
}

/// A job to queue.
#[derive(Clone, Copy, Debug)]
pub struct NewJob<'a> {
    pub id: &'a str,
    pub kind: AgentOperation,
    pub resource_kind: ResourceKind,
    pub resource_id: &'a str,
    pub request_id: Option<&'a str>,
}

impl Tx {
    pub async fn enqueue_job(
        &mut self,
        id: &str,
        kind: AgentOperation,
        resource_kind: ResourceKind,
        resource_id: &str,
        request_id: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let job = NewJob {
            id,
            kind,
            resource_kind,
            resource_id,
            request_id,
        };
        self.enqueue_job_with(&job, "{}", now).await
    }

    /// Queues a job whose outputs start as `outputs` (a JSON object): what the job is asked
    /// to do beyond its kind, recorded with it before any of its steps runs.
    pub async fn enqueue_job_with(
        &mut self,
        job: &NewJob<'_>,
        outputs: &str,
        now: i64,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO jobs (id, kind, resource_kind, resource_id, status, attempts, run_after,
                               request_id, created_at, step, outputs)
             VALUES ($1, $2, $6, $3, 'queued', 0, $4, $5, $4, 0, $7)",
        )
        .bind(job.id)
        .bind(job.kind.as_db())
        .bind(job.resource_id)
        .bind(now)
        .bind(job.request_id)
        .bind(job.resource_kind.as_db())
        .bind(outputs)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Claims the oldest due job for `owner` until `lease_until`: queued and due, or running
    /// under a lease that expired or whose holder is a gone replica (one that announced itself
    /// but has been silent since before `silent_before`). A holder that never announced itself
    /// keeps its lease until it expires. The condition is checked again on the row itself, so
    /// when two replicas race for one job exactly one gets it.
    pub async fn claim_job(
        &mut self,
        owner: &str,
        now: i64,
        lease_until: i64,
        silent_before: i64,
    ) -> Result<Option<JobRow>> {
        let raw: Option<RawJob> = on_conn!(self, conn => sqlx::query_as(concat!(
            "UPDATE jobs
             SET status = 'running', lease_owner = $1, lease_until = $3, attempts = attempts + 1
             WHERE id = (SELECT id FROM jobs
                         WHERE (status = 'queued' AND run_after <= $2)
                            OR (status = 'running' AND (lease_until < $2 OR lease_owner IN
                                (SELECT id FROM replicas WHERE seen_at < $4)))
                         ORDER BY run_after, id LIMIT 1)
               AND ((status = 'queued' AND run_after <= $2)
                    OR (status = 'running' AND (lease_until < $2 OR lease_owner IN
                        (SELECT id FROM replicas WHERE seen_at < $4))))
             RETURNING ", job_columns!()))
        .bind(owner)
        .bind(now)
        .bind(lease_until)
        .bind(silent_before)
        .fetch_optional(conn)
        .await)?;
        raw.map(JobRow::try_from).transpose()
    }

    /// Marks the job done or failed for good. Returns false if `owner` no longer holds it.
    pub async fn finish_job(
        &mut self,
        id: &str,
        owner: &str,
        failed: bool,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let status = if failed { "failed" } else { "done" };
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET status = $3, last_error = $4, finished_at = $5, lease_owner = NULL,
                             lease_until = NULL
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(status)
        .bind(error)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Puts the job back in the queue to run again at `run_after`.
    pub async fn retry_job(
        &mut self,
        id: &str,
        owner: &str,
        run_after: i64,
        error: &str,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = $3, last_error = $4, lease_owner = NULL,
                             lease_until = NULL
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(run_after)
        .bind(error)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Puts the job back to run again at `run_after` without counting this run as an attempt:
    /// it was waiting, not failing. Only `owner` may.
    pub async fn postpone_job(
        &mut self,
        id: &str,
        owner: &str,
        run_after: i64,
        reason: &str,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = $3, last_error = $4, lease_owner = NULL,
                             lease_until = NULL, attempts = CASE WHEN attempts > 0
                                                                 THEN attempts - 1 ELSE 0 END
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(run_after)
        .bind(reason)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Puts a job that failed for good back in the queue, due now with fresh attempts, to
    /// run its undo steps: `outputs` says so and why. Only `owner` may.
    pub async fn unwind_job(
        &mut self,
        id: &str,
        owner: &str,
        outputs: &str,
        run_after: i64,
        error: &str,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET status = 'queued', run_after = $3, last_error = $4, outputs = $5,
                             attempts = 0, lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(run_after)
        .bind(error)
        .bind(outputs)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Records that the job finished its first `step` steps, with what they produced, in the
    /// transaction that follows the last of them. Returns false if `owner` no longer holds it.
    pub async fn record_job_step(
        &mut self,
        id: &str,
        owner: &str,
        step: i64,
        outputs: &str,
    ) -> Result<bool> {
        let recorded = on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET step = $3, outputs = $4
             WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(step)
        .bind(outputs)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(recorded == 1)
    }

    /// Ends every job lease `owner` holds, so any replica may claim those jobs at once: for a
    /// replica known to be dead (see `crate::predecessor`). Returns how many were released.
    pub async fn release_job_leases(&mut self, owner: &str) -> Result<u64> {
        Ok(on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET lease_until = 0 WHERE lease_owner = $1 AND status = 'running'",
        )
        .bind(owner)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?)
    }

    /// Extends the lease `owner` holds on a running job. Returns false if it was lost.
    pub async fn renew_job_lease(
        &mut self,
        id: &str,
        owner: &str,
        lease_until: i64,
    ) -> Result<bool> {
        let renewed = on_conn!(self, conn => sqlx::query(
            "UPDATE jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(lease_until)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(renewed == 1)
    }

    /// When the next queued job is due, if any.
    pub async fn next_job_due(&mut self) -> Result<Option<i64>> {
        Ok(on_conn!(self, conn => sqlx::query_scalar(
            "SELECT MIN(CASE WHEN status = 'queued' THEN run_after ELSE lease_until END)
             FROM jobs WHERE status IN ('queued', 'running')",
        )
        .fetch_one(conn)
        .await)?)
    }
}
