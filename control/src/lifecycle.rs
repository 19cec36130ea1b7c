//! Agents' lifecycle: provision, start, stop, destroy and transfer, and the jobs that carry the
//! provider work out.
//!
//! A request is accepted in one transaction that marks the operation under way, appends its
//! audit event, queues a durable job and stores the idempotent answer; the provider is called
//! later by [`run_due_jobs`], on any replica, and only what the provider confirms changes the
//! ledger. Transfers touch no provider and take effect at once.
//!
//! Every change locks the Agent's row first (a compare-and-set), then touches periods, then
//! appends to the audit chain: one lock order everywhere, so no two requests deadlock.

use std::collections::BTreeMap;
use std::time::Duration;

use control_api::agents::{
    Agent, AgentList, AgentOperation, AgentState, ImagePin, PeriodState, ProvisionAgent,
    StatePeriod, Timeline, TransferAgent,
};
use control_api::audit::AuditAction;
use control_api::usage::ResourceKind;
use control_api::{Timestamp, UPGRADE_NOTE};
use tracing::{info, warn};

use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::ledger;
use crate::providers::{ProviderError, VmSpec};
use crate::store::{AgentRow, JobRow, NewAgent, OperationOutcome, StoreError, Tx};
use crate::validate::Checks;

/// The status the API answers an accepted lifecycle operation with.
pub const ACCEPTED: u16 = 202;

/// Largest page of Agents one listing returns.
pub const MAX_PAGE: i64 = 200;

/// The wire form of a stored Agent.
pub fn to_api(row: AgentRow) -> Result<Agent, StoreError> {
    let env: BTreeMap<String, String> = serde_json::from_str(&row.env)
        .map_err(|e| StoreError::Corrupt(format!("agent {} env: {e}", row.id)))?;
    let destroyed = row.destroyed_at.is_some();
    // Image ids are time-ordered, so a smaller id is an older release.
    let outdated = !destroyed
        && row
            .current_image_id
            .as_deref()
            .is_some_and(|current| row.image_id.as_str() < current);
    let state = match (destroyed, row.state) {
        (true, _) => AgentState::Destroyed,
        (false, PeriodState::Running) => AgentState::Running,
        (false, PeriodState::Paused) => AgentState::Paused,
    };
    Ok(Agent {
        id: row.id,
        account_id: row.account_id,
        name: row.name,
        provider: row.provider,
        state,
        operation: row.operation,
        last_error: row.last_error,
        image: ImagePin {
            image_id: row.image_id,
            version: row.image_version,
            agent_version: row.image_agent_version,
            manifest_digest: row.image_manifest_digest,
            reference: row.image_ref,
            env,
        },
        outdated,
        upgrade_note: outdated.then(|| UPGRADE_NOTE.to_owned()),
        provisioned_at: Timestamp::from_millis(row.provisioned_at),
        destroyed_at: row.destroyed_at.map(Timestamp::from_millis),
        healthy: (state == AgentState::Running && row.last_heartbeat_at.is_some())
            .then_some(row.unhealthy_since.is_none()),
        last_heartbeat_at: row.last_heartbeat_at.map(Timestamp::from_millis),
    })
}

/// The Agent if it exists and the caller may see it; otherwise 404, the same either way.
async fn visible_agent(tx: &mut Tx, caller: &Caller, id: &str) -> Result<AgentRow> {
    if !crate::ids::looks_like(prefix::AGENT, id) {
        return Err(Error::not_found("agent", id.escape_debug().to_string()));
    }
    match tx.agent(id).await? {
        Some(agent) if caller.principal.can_see(&agent.account_id) => Ok(agent),
        _ => Err(Error::not_found("agent", id)),
    }
}

async fn reread(tx: &mut Tx, id: &str) -> Result<Agent> {
    let row = tx.agent(id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("agent {id} vanished in its own transaction"))
    })?;
    Ok(to_api(row)?)
}

pub async fn get(app: &App, caller: &Caller, id: &str) -> Result<Agent> {
    let mut tx = app.store.read().await?;
    Ok(to_api(visible_agent(&mut tx, caller, id).await?)?)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    cursor: Option<&str>,
    limit: i64,
    include_destroyed: bool,
) -> Result<AgentList> {
    let limit = limit.clamp(1, MAX_PAGE);
    if cursor.is_some_and(|c| !crate::ids::looks_like(prefix::AGENT, c)) {
        return Err(Error::invalid(
            "cursor",
            "is not a cursor this API returned",
        ));
    }
    let mut tx = app.store.read().await?;
    let mut rows = tx
        .agents(
            caller.principal.account_scope(),
            cursor,
            include_destroyed,
            limit + 1,
        )
        .await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|row| row.id.clone())
    } else {
        None
    };
    let items = rows.into_iter().map(to_api).collect::<Result<_, _>>()?;
    Ok(AgentList { items, next_cursor })
}

pub async fn provision(
    app: &App,
    caller: &Caller,
    request: &ProvisionAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let mut checks = Checks::new();
    checks.dns_label("name", &request.name);
    let account_id = match (
        caller.principal.account_scope(),
        request.account_id.as_deref(),
    ) {
        (Some(own), None) => own,
        (None, Some(named)) => named,
        (Some(own), Some(_)) => {
            checks.fail(
                "account_id",
                "only operator tokens name an account; account tokens provision for their own",
            );
            own
        }
        (None, None) => {
            checks.fail("account_id", "is required with an operator token");
            ""
        }
    };
    checks.finish()?;

    let now = app.clock.now();
    let provider = app.providers.default_provider();
    if !crate::ids::looks_like(prefix::ACCOUNT, account_id) {
        return Err(Error::invalid(
            "account_id",
            format!("no account {}", account_id.escape_debug()),
        ));
    }
    let mut tx = app.store.write().await?;
    if tx.account(account_id).await?.is_none() {
        return Err(Error::invalid(
            "account_id",
            format!("no account {account_id}"),
        ));
    }
    let image = tx.current_image().await?.ok_or_else(|| {
        Error::Conflict(
            "no image release is current: register one with POST /api/images and select it with PUT /api/images/current"
                .to_owned(),
        )
    })?;
    let refs: BTreeMap<String, String> = serde_json::from_str(&image.refs)
        .map_err(|e| StoreError::Corrupt(format!("image {} refs: {e}", image.id)))?;
    let image_ref = refs.get(provider.name()).ok_or_else(|| {
        Error::Conflict(format!(
            "the current release {} has no image for provider {}",
            image.version,
            provider.name()
        ))
    })?;

    let agent_id = new_id(prefix::AGENT);
    tx.insert_agent(&NewAgent {
        id: &agent_id,
        account_id,
        name: &request.name,
        provider: provider.name(),
        image_id: &image.id,
        image_ref,
        env: &image.env,
        provisioned_at: now.as_millis(),
    })
    .await?;
    // Paused until the VM is seen running.
    ledger::open(&mut tx, &agent_id, account_id, PeriodState::Paused, now).await?;
    audit::append(
        &mut tx,
        NewEvent {
            at: now,
            actor: &caller.principal.actor(),
            action: AuditAction::AgentProvision,
            resource_kind: ResourceKind::Agent,
            resource_id: &agent_id,
            account_id,
            to_account_id: None,
            request_id: Some(&caller.request_id),
            details: serde_json::json!({
                "name": request.name,
                "provider": provider.name(),
                "image_id": image.id,
                "image_version": image.version,
            }),
        },
    )
    .await?;
    queue_job(&mut tx, AgentOperation::Provision, &agent_id, caller, now).await?;
    let agent = reread(&mut tx, &agent_id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &agent).await?;
    tx.commit().await?;
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %account_id,
        agent_id = %agent_id,
        image_version = %image.version,
        provider = %provider.name(),
        "agent provisioning accepted"
    );
    Ok(agent)
}

/// Accepts a start, stop or destroy.
pub async fn request(
    app: &App,
    caller: &Caller,
    id: &str,
    operation: AgentOperation,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let action = match operation {
        AgentOperation::Start => AuditAction::AgentStart,
        AgentOperation::Stop => AuditAction::AgentStop,
        AgentOperation::Destroy => AuditAction::AgentDestroy,
        AgentOperation::Provision => {
            return Err(Error::Conflict(
                "provisioning is requested with POST /api/agents".to_owned(),
            ));
        }
    };
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible_agent(&mut tx, caller, id).await?;
    if !tx
        .begin_operation(
            id,
            caller.principal.account_scope(),
            operation,
            now.as_millis(),
        )
        .await?
    {
        return Err(Error::Conflict(refusal(&before, operation)));
    }
    audit::append(
        &mut tx,
        NewEvent {
            at: now,
            actor: &caller.principal.actor(),
            action,
            resource_kind: ResourceKind::Agent,
            resource_id: id,
            account_id: &before.account_id,
            to_account_id: None,
            request_id: Some(&caller.request_id),
            details: serde_json::json!({}),
        },
    )
    .await?;
    queue_job(&mut tx, operation, id, caller, now).await?;
    let agent = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &agent).await?;
    tx.commit().await?;
    app.ingest.forget(id);
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %before.account_id,
        agent_id = %id,
        operation = ?operation,
        "agent operation accepted"
    );
    Ok(agent)
}

/// Why `operation` cannot begin on `agent`, in words the dashboard can show.
fn refusal(agent: &AgentRow, operation: AgentOperation) -> String {
    let id = &agent.id;
    if agent.destroyed_at.is_some() {
        return format!("agent {id} is destroyed");
    }
    if let Some(pending) = agent.operation {
        return format!(
            "agent {id} has a {} in progress; retry when it completes",
            verb(pending)
        );
    }
    match (operation, agent.state) {
        _ if agent.provider_id.is_none() && operation != AgentOperation::Destroy => {
            format!(
                "agent {id} has no VM yet; its provisioning failed: {}",
                agent.last_error.as_deref().unwrap_or("unknown error")
            )
        }
        (AgentOperation::Start, PeriodState::Running) => format!("agent {id} is already running"),
        (AgentOperation::Stop, PeriodState::Paused) => format!("agent {id} is already stopped"),
        _ => format!("agent {id} changed while the request was handled; retry"),
    }
}

fn verb(operation: AgentOperation) -> &'static str {
    match operation {
        AgentOperation::Provision => "provisioning",
        AgentOperation::Start => "start",
        AgentOperation::Stop => "stop",
        AgentOperation::Destroy => "destroy",
    }
}

/// Moves an Agent to another account at this instant: the source's open period ends now and
/// the destination's begins now in the same state. Operators only.
pub async fn transfer(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &TransferAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    let before = visible_agent(&mut tx, caller, id).await?;
    if !caller.principal.is_operator() {
        return Err(Error::Forbidden(
            "transferring an agent requires an operator token".to_owned(),
        ));
    }
    let to = request.to_account.as_str();
    if to == before.account_id {
        return Err(Error::invalid(
            "to_account",
            format!("agent {id} already belongs to account {to}"),
        ));
    }
    if !crate::ids::looks_like(prefix::ACCOUNT, to) || tx.account(to).await?.is_none() {
        return Err(Error::invalid(
            "to_account",
            format!("no account {}", to.escape_debug()),
        ));
    }
    if before.destroyed_at.is_some() {
        return Err(Error::Conflict(format!("agent {id} is destroyed")));
    }
    if !tx
        .reassign_agent(id, &before.account_id, to, now.as_millis())
        .await?
    {
        return Err(Error::Conflict(format!(
            "agent {id} changed while the request was handled; retry"
        )));
    }
    let open = tx
        .open_period(id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("agent {id} has no open state period")))?;
    // The event records the instant the ledger split at (later than `now` only if this
    // replica's clock lags the one that opened the current period).
    let at = ledger::switch(&mut tx, id, to, open.state, now).await?;
    audit::append(
        &mut tx,
        NewEvent {
            at,
            actor: &caller.principal.actor(),
            action: AuditAction::AgentTransfer,
            resource_kind: ResourceKind::Agent,
            resource_id: id,
            account_id: &before.account_id,
            to_account_id: Some(to),
            request_id: Some(&caller.request_id),
            details: serde_json::json!({ "state": open.state }),
        },
    )
    .await?;
    let agent = reread(&mut tx, id).await?;
    idempotency::record(&mut tx, idem, 200, &agent).await?;
    tx.commit().await?;
    app.ingest.forget(id);
    info!(
        request_id = %caller.request_id,
        agent_id = %id,
        from_account_id = %before.account_id,
        to_account_id = %to,
        "agent transferred"
    );
    Ok(agent)
}

/// The Agent's state periods overlapping `[from, to)` (by default its whole lifetime so far).
/// Account tokens see only the periods attributed to their account.
pub async fn timeline(
    app: &App,
    caller: &Caller,
    id: &str,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Timeline> {
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(Error::invalid("to", "must be after `from`"));
    }
    let mut tx = app.store.read().await?;
    let agent = visible_agent(&mut tx, caller, id).await?;
    let from = from.map_or(agent.provisioned_at, Timestamp::as_millis);
    let to = to.map_or(i64::MAX, Timestamp::as_millis);
    let periods = tx
        .agent_periods(id, caller.principal.account_scope(), from, to)
        .await?
        .into_iter()
        .map(|p| StatePeriod {
            account_id: p.account_id,
            state: p.state,
            started_at: Timestamp::from_millis(p.started_at),
            ended_at: p.ended_at.map(Timestamp::from_millis),
        })
        .collect();
    Ok(Timeline {
        agent_id: id.to_owned(),
        periods,
    })
}

async fn queue_job(
    tx: &mut Tx,
    operation: AgentOperation,
    agent_id: &str,
    caller: &Caller,
    now: Timestamp,
) -> Result<()> {
    tx.enqueue_job(
        &new_id(prefix::JOB),
        operation,
        agent_id,
        Some(&caller.request_id),
        now.as_millis(),
    )
    .await?;
    Ok(())
}

/// Runs every job that is due now, one after another, and returns how many ran. Safe on any
/// number of replicas at once: each job is claimed with a lease first.
pub async fn run_due_jobs(app: &App) -> Result<usize> {
    let mut ran = 0;
    let mut lost_races = 0;
    loop {
        let now = app.clock.now().as_millis();
        let lease_until = now + millis(app.settings.job_lease);
        let mut tx = app.store.write().await?;
        let Some(job) = tx.claim_job(&app.replica_id, now, lease_until).await? else {
            // Another replica may have won the race for the job we aimed at while others are
            // still due: look again a few times before waiting for the next poll.
            let due = tx.next_job_due().await?.is_some_and(|at| at <= now);
            drop(tx);
            lost_races += 1;
            if due && lost_races <= 3 {
                continue;
            }
            break;
        };
        tx.commit().await?;
        if job.attempts > app.settings.job_max_attempts {
            // Whatever keeps failing (a transient provider error or our own), stop retrying.
            let message = format!("gave up after {} attempts", job.attempts - 1);
            fail(app, &job, &load_agent(app, &job).await?, &message).await?;
        } else {
            run_job(app, &job).await?;
        }
        ran += 1;
    }
    Ok(ran)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

async fn load_agent(app: &App, job: &JobRow) -> Result<AgentRow> {
    Ok(app
        .store
        .read()
        .await?
        .agent(&job.agent_id)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "job {} names unknown agent {}",
                job.id, job.agent_id
            ))
        })?)
}

async fn run_job(app: &App, job: &JobRow) -> Result<()> {
    let agent = load_agent(app, job).await?;
    let outcome = with_lease(app, job, call_provider(app, job, &agent)).await?;
    match outcome {
        Ok(provider_id) => confirm(app, job, &agent, provider_id.as_deref()).await,
        Err(ProviderError::Transient(message)) if job.attempts < app.settings.job_max_attempts => {
            retry(app, job, &agent, &message).await
        }
        Err(error) => fail(app, job, &agent, &error.to_string()).await,
    }
}

/// Runs `work` while renewing the job's lease every third of its length, so a long provider
/// call is not taken over by another replica.
async fn with_lease<T>(
    app: &App,
    job: &JobRow,
    work: impl std::future::Future<Output = T>,
) -> Result<T> {
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
                    warn!(job_id = %job.id, "job lease lost during the provider call; its result will be dropped");
                }
            }
        }
    }
}

/// Records what the provider confirmed: the operation ends and the ledger follows.
async fn confirm(
    app: &App,
    job: &JobRow,
    agent: &AgentRow,
    provider_id: Option<&str>,
) -> Result<()> {
    let now = app.clock.now();
    let state = match job.kind {
        AgentOperation::Provision | AgentOperation::Start => Some(PeriodState::Running),
        AgentOperation::Stop => Some(PeriodState::Paused),
        AgentOperation::Destroy => None,
    };
    let mut tx = app.store.write().await?;
    // The compare-and-set on the Agent row comes first: it is the row lock.
    let outcome = OperationOutcome {
        provider_id,
        state,
        error: None,
    };
    if !tx
        .finish_operation(&agent.id, job.kind, &outcome, now.as_millis())
        .await?
    {
        // The Agent's operation was concluded already (by a replica that took this job over);
        // close the job so it is not run again, and change nothing else.
        tx.finish_job(
            &job.id,
            &app.replica_id,
            false,
            Some("operation already concluded"),
            now.as_millis(),
        )
        .await?;
        tx.commit().await?;
        warn!(job_id = %job.id, agent_id = %agent.id, "agent operation was already concluded; job closed");
        return Ok(());
    }
    if !tx
        .finish_job(&job.id, &app.replica_id, false, None, now.as_millis())
        .await?
    {
        // Our lease ran out and another replica holds the job now: roll back, let it conclude.
        warn!(job_id = %job.id, agent_id = %agent.id, "job lease lost; leaving the result to its new holder");
        return Ok(());
    }
    // Re-read: a transfer may have moved the Agent while the provider worked.
    let owner = tx
        .agent(&agent.id)
        .await?
        .map_or_else(|| agent.account_id.clone(), |a| a.account_id);
    if let Some(state) = state {
        ledger::switch(&mut tx, &agent.id, &owner, state, now).await?;
    } else {
        let at = ledger::close(&mut tx, &agent.id, now).await?;
        tx.mark_destroyed(&agent.id, at.as_millis()).await?;
        // Its VM is gone: nothing may heartbeat as it any more.
        tx.revoke_agent_credentials(&agent.id, at.as_millis())
            .await?;
    }
    tx.commit().await?;
    app.ingest.forget(&agent.id);
    info!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        account_id = %owner,
        agent_id = %agent.id,
        job_id = %job.id,
        operation = ?job.kind,
        state = ?state.map_or(AgentState::Destroyed, |s| match s {
            PeriodState::Running => AgentState::Running,
            PeriodState::Paused => AgentState::Paused,
        }),
        "agent operation confirmed by the provider"
    );
    Ok(())
}

/// Puts the job back in the queue after a transient provider error.
async fn retry(app: &App, job: &JobRow, agent: &AgentRow, message: &str) -> Result<()> {
    let now = app.clock.now();
    let delay = retry_delay(app, job.attempts);
    let mut tx = app.store.write().await?;
    tx.retry_job(
        &job.id,
        &app.replica_id,
        now.as_millis() + millis(delay),
        message,
    )
    .await?;
    tx.commit().await?;
    warn!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        agent_id = %agent.id,
        job_id = %job.id,
        attempt = job.attempts,
        retry_in_s = delay.as_secs(),
        error = %message,
        "provider call failed; will retry"
    );
    Ok(())
}

/// Gives up on the operation: the Agent keeps its state and shows the error. Only the lease
/// holder may do so; a worker whose lease ran out changes nothing.
async fn fail(app: &App, job: &JobRow, agent: &AgentRow, message: &str) -> Result<()> {
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    // The Agent row first, as everywhere; without the lease, roll back.
    let outcome = OperationOutcome {
        error: Some(message),
        ..OperationOutcome::default()
    };
    tx.finish_operation(&agent.id, job.kind, &outcome, now)
        .await?;
    if !tx
        .finish_job(&job.id, &app.replica_id, true, Some(message), now)
        .await?
    {
        warn!(job_id = %job.id, agent_id = %agent.id, "job lease lost; leaving the failure to its new holder");
        return Ok(());
    }
    tx.commit().await?;
    app.ingest.forget(&agent.id);
    warn!(
        request_id = %job.request_id.as_deref().unwrap_or("-"),
        account_id = %agent.account_id,
        agent_id = %agent.id,
        job_id = %job.id,
        operation = ?job.kind,
        error = %message,
        "agent operation failed"
    );
    Ok(())
}

fn retry_delay(app: &App, attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    app.settings
        .job_retry_base
        .saturating_mul(1 << exponent)
        .min(app.settings.job_retry_cap)
}

/// A new single-use bootstrap token for the Agent's VM; only its hash is stored. A retried
/// provisioning replaces the unused token of the earlier attempt.
async fn bootstrap(app: &App, agent_id: &str) -> Result<crate::providers::Secret> {
    let (token, hash) = crate::ingest::new_bootstrap_token()?;
    let now = app.clock.now().as_millis();
    let expires = now + millis(app.settings.ingest.bootstrap_ttl);
    let mut tx = app.store.write().await?;
    tx.put_bootstrap(agent_id, &hash, now, expires).await?;
    tx.commit().await?;
    Ok(crate::providers::Secret(token))
}

/// Calls the provider for the job; returns the VM's provider id when one was created.
async fn call_provider(
    app: &App,
    job: &JobRow,
    agent: &AgentRow,
) -> Result<Option<String>, ProviderError> {
    let provider = app.providers.get(&agent.provider).ok_or_else(|| {
        ProviderError::Permanent(format!(
            "provider {} is not configured on this control plane",
            agent.provider
        ))
    })?;
    let env = serde_json::from_str(&agent.env).map_err(|e| {
        ProviderError::Permanent(format!("agent {} env is unreadable: {e}", agent.id))
    })?;
    let bootstrap_token = if job.kind == AgentOperation::Provision {
        Some(
            bootstrap(app, &agent.id)
                .await
                .map_err(|e| ProviderError::Transient(e.to_string()))?,
        )
    } else {
        None
    };
    let spec = VmSpec {
        agent_id: agent.id.clone(),
        name: agent.name.clone(),
        image_ref: agent.image_ref.clone(),
        env,
        bootstrap_token,
    };
    let provider_id = || {
        agent
            .provider_id
            .as_deref()
            .ok_or_else(|| ProviderError::Permanent(format!("agent {} has no VM", agent.id)))
    };
    match job.kind {
        AgentOperation::Provision => provider.create(&spec).await.map(Some),
        AgentOperation::Start => provider.start(provider_id()?, &spec).await.map(|()| None),
        AgentOperation::Stop => provider.stop(provider_id()?).await.map(|()| None),
        AgentOperation::Destroy => provider
            .destroy(agent.provider_id.as_deref(), &agent.id)
            .await
            .map(|()| None),
    }
}
