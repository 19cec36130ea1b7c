//! `POST /api/agents/{id}/clone`: a new Agent in the source's account, on the current image
//! release, whose `/data/home-coder` starts as a copy of the source's.
//!
//! Accepted in one transaction: the source's row is marked `cloning_to` the clone (a
//! compare-and-set that also holds the source's start, stop, destroy and other clones until
//! the clone is made), the clone is inserted paused with its provisioning under way (its
//! ledger starts here, at its own provisioning), an `agent.clone` event is appended on each,
//! and the clone's job is queued with [`CloneParams`]: the source and the state it was in, the
//! state it is put back in. The job (`crate::jobs`) stops a running source for a consistent
//! copy, has the cloud copy the slice (or lends the source's volume to the clone's VM, which
//! copies it), starts the source again, and provisions the clone.
//!
//! Refused, changing nothing: a legacy Fly Agent (its slice is on a Fly volume that only a
//! Fly machine in its region can mount, and no Hetzner server can attach, so the platform
//! cannot copy it), an Agent on another cloud than the one new Agents go to, or on a cloud
//! that can neither copy slices nor attach volumes.

use control_api::agents::{Agent, AgentOperation, CloneAgent, PeriodState};
use control_api::audit::AuditAction;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::provision::{current_release, preflight};
use super::{ACCEPTED, reread, visible_agent};
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::ledger::{self, ResourceRef};
use crate::store::{AgentRow, NewAgent, NewJob};
use crate::validate::Checks;

/// What a clone's provisioning job is asked to do beyond provisioning, recorded with the job
/// (under [`CloneParams::KEY`] in its outputs) before any step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneParams {
    /// The Agent whose slice is copied.
    pub source_id: String,
    /// Its state when the clone was accepted: the state it is put back in.
    pub source_was: PeriodState,
}

impl CloneParams {
    /// The key of the parameters among the job's outputs (no step has this name).
    pub const KEY: &'static str = "clone";
}

/// The name a clone gets when the request gives none.
const SUFFIX: &str = "-clone";

/// Why the source cannot be cloned now, if it cannot.
fn refusal(app: &App, source: &AgentRow) -> Option<Error> {
    let id = &source.id;
    if source.provider == crate::providers::fly::NAME {
        return Some(Error::Conflict(format!(
            "agent {id} is a legacy Fly Agent: its /data/home-coder lives on a Fly volume, which \
             only a Fly machine can mount and no Hetzner server can attach, so the platform \
             cannot copy it; copy the files yourself into a new Agent (POST /api/agents)"
        )));
    }
    if source.destroyed_at.is_some() || source.operation.is_some() || source.cloning_to.is_some() {
        return Some(Error::Conflict(super::operate::refusal(
            source,
            AgentOperation::Start,
        )));
    }
    if source.provider_id.is_none() {
        return Some(Error::Conflict(format!(
            "agent {id} has no VM, so no slice to copy; its provisioning failed: {}",
            source.last_error.as_deref().unwrap_or("unknown error")
        )));
    }
    let target = app.providers.default_cloud();
    if source.provider != target.name {
        return Some(Error::Conflict(format!(
            "agent {id} lives on {}, and new Agents go to {}: a slice is not copied across clouds",
            source.provider, target.name
        )));
    }
    if target.slices.is_none() && target.volumes.is_none() {
        return Some(Error::Conflict(format!(
            "provider {} can neither copy an Agent's slice nor lend its volume, so agent {id} \
             cannot be cloned",
            target.name
        )));
    }
    None
}

/// The clone's name: the request's, or the source's with [`SUFFIX`].
fn clone_name(request: &CloneAgent, source: &AgentRow) -> Result<String> {
    let mut checks = Checks::new();
    let name = if let Some(name) = &request.name {
        checks.dns_label("name", name);
        name.clone()
    } else {
        let name = format!("{}{SUFFIX}", source.name);
        if name.chars().count() > 63 {
            checks.fail(
                "name",
                format!("is required: the default, {name}, is longer than 63 characters"),
            );
        }
        name
    };
    checks.finish()?;
    Ok(name)
}

/// Accepts a clone of the Agent `id`.
pub async fn clone(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &CloneAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let source = visible_agent(&mut app.store.read().await?, caller, id).await?;
    let name = clone_name(request, &source)?;
    if let Some(refused) = refusal(app, &source) {
        return Err(refused);
    }
    preflight(app).await?;

    let mut tx = app.store.write().await?;
    let now = app.clock.now();
    let source = visible_agent(&mut tx, caller, id).await?;
    if let Some(refused) = refusal(app, &source) {
        return Err(refused);
    }
    let provider = app.providers.default_cloud().name;
    let (image, image_ref) = current_release(&mut tx, provider).await?;
    let clone_id = new_id(prefix::AGENT);
    let account_id = source.account_id.as_str();
    tx.insert_agent(&NewAgent {
        id: &clone_id,
        account_id,
        name: &name,
        provider,
        image_id: &image.id,
        image_ref: &image_ref,
        env: &image.env,
        provisioned_at: now.as_millis(),
        cloned_from: Some(id),
    })
    .await?;
    // The clone's row first: the source's row names it.
    if !tx
        .begin_cloning(
            id,
            caller.principal.account_scope(),
            source.state,
            &clone_id,
            now.as_millis(),
        )
        .await?
    {
        return Err(Error::Conflict(format!(
            "agent {id} changed while the request was handled; retry"
        )));
    }
    // Its own ledger, from its own provisioning: paused until its VM is seen running.
    ledger::open(
        &mut tx,
        ResourceRef::agent(&clone_id),
        account_id,
        PeriodState::Paused,
        now,
    )
    .await?;
    let on = |resource, details| NewEvent {
        details,
        ..NewEvent::by(caller, now, AuditAction::AgentClone, resource, account_id)
    };
    let source_event = serde_json::json!({ "clone_id": clone_id, "state": source.state });
    audit::append(&mut tx, on(ResourceRef::agent(id), source_event)).await?;
    let clone_event = serde_json::json!({
        "source_id": id,
        "name": name,
        "provider": provider,
        "image_id": image.id,
        "image_version": image.version,
    });
    audit::append(&mut tx, on(ResourceRef::agent(&clone_id), clone_event)).await?;
    queue(&mut tx, caller, &clone_id, id, source.state, now).await?;
    let agent = reread(&mut tx, &clone_id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &agent).await?;
    super::forget_after_commit(app, &mut tx, id);
    tx.commit().await?;
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %account_id,
        agent_id = %clone_id,
        source_agent_id = %id,
        image_version = %image.version,
        "agent clone accepted"
    );
    Ok(agent)
}

/// Queues the clone's provisioning with what it copies and restores.
async fn queue(
    tx: &mut crate::store::Tx,
    caller: &Caller,
    clone_id: &str,
    source_id: &str,
    source_was: PeriodState,
    now: control_api::Timestamp,
) -> Result<()> {
    let params = CloneParams {
        source_id: source_id.to_owned(),
        source_was,
    };
    let outputs = serde_json::json!({ CloneParams::KEY: params }).to_string();
    let job = NewJob {
        id: &new_id(prefix::JOB),
        kind: AgentOperation::Provision,
        resource_kind: control_api::usage::ResourceKind::Agent,
        resource_id: clone_id,
        request_id: Some(&caller.request_id),
    };
    tx.enqueue_job_with(&job, &outputs, now.as_millis()).await?;
    Ok(())
}
