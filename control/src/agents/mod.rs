//! The Agent service: get and list, provision, operate (start, stop, destroy), transfer and
//! the timeline, and [`observed`], the one place that changes an Agent's observed state.
//!
//! A request is accepted in one transaction that marks the operation under way, appends its
//! audit event, queues a durable job (`crate::jobs`) and stores the idempotent answer; the
//! provider is called later by the job, on any replica, and only what the provider confirms
//! changes the ledger. Transfers touch no provider and take effect at once.
//!
//! Every change locks the Agent's row first (a compare-and-set), then touches periods, then
//! appends to the audit chain: one lock order everywhere, so no two requests deadlock.
//!
//! May call: the store, the ledger, the audit chain, idempotency. Never a provider: that is
//! the jobs' work.

mod bootstrap;
mod clone;
mod import;
mod observed;
mod operate;
mod provision;
mod timeline;
mod transfer;

use std::collections::BTreeMap;

use control_api::agents::{Agent, AgentList, AgentOperation, AgentState, AgentSupport, ImagePin};
use control_api::usage::ResourceKind;
use control_api::{Timestamp, UPGRADE_NOTE};

use crate::app::Caller;
use crate::error::{Error, Result};
use crate::ids::{new_id, prefix};
use crate::store::{AgentRow, StoreError, Tx};

pub use bootstrap::rebootstrap;
pub use clone::{CloneParams, clone};
pub use import::import;
pub use observed::{Cas, RecordCache, Recorded, record_observed};
pub use operate::request;
pub(crate) use operate::verb;
pub use provision::provision;
pub use timeline::timeline;
pub use transfer::transfer;

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
    let state = if destroyed {
        AgentState::Destroyed
    } else {
        row.state.into()
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
        cloned_from: row.cloned_from,
        cloning_to: row.cloning_to,
        support: None,
    })
}

/// The Agent if it exists and the caller may see it; otherwise 404, the same either way.
pub(crate) async fn visible_agent(tx: &mut Tx, caller: &Caller, id: &str) -> Result<AgentRow> {
    if !crate::ids::looks_like(prefix::AGENT, id) {
        return Err(Error::not_found("agent", id.escape_debug().to_string()));
    }
    match tx.agent(id).await? {
        Some(agent) if caller.principal.can_see(&agent.account_id) => Ok(agent),
        _ => Err(Error::not_found("agent", id)),
    }
}

pub(crate) async fn reread(tx: &mut Tx, id: &str) -> Result<Agent> {
    let row = tx.agent(id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("agent {id} vanished in its own transaction"))
    })?;
    Ok(to_api(row)?)
}

/// One Agent, with its support view from the newest heartbeat this replica holds in memory
/// or finds in the database (whichever replica received it).
pub async fn get(app: &crate::app::App, caller: &Caller, id: &str) -> Result<Agent> {
    let mut tx = app.store.read().await?;
    let mut agent = to_api(visible_agent(&mut tx, caller, id).await?)?;
    drop(tx);
    if let Some(latest) = app.ingest.latest(id).await? {
        let heartbeat_at = Timestamp::from_millis(latest.seen_at);
        // The liveness row may lag what this replica holds: show the newer.
        if agent.last_heartbeat_at.is_none_or(|at| at < heartbeat_at) {
            agent.last_heartbeat_at = Some(heartbeat_at);
        }
        agent.support = Some(support_view(heartbeat_at, latest.beat));
    }
    Ok(agent)
}

fn support_view(heartbeat_at: Timestamp, beat: control_api::agent::Heartbeat) -> AgentSupport {
    AgentSupport {
        heartbeat_at,
        boot_id: beat.boot_id,
        sequence: beat.sequence,
        agent_version: beat.agent_version,
        image_version: beat.image_version,
        agent_uptime_s: beat.agent_uptime_s,
        tunnel: beat.cloudflared,
        slice: beat.slice,
    }
}

pub async fn list(
    app: &crate::app::App,
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
    let rows = tx
        .agents(
            caller.principal.account_scope(),
            cursor,
            include_destroyed,
            limit + 1,
        )
        .await?;
    let (rows, next_cursor) = crate::paging::one_page(rows, limit, |row| row.id.clone());
    let items = rows.into_iter().map(to_api).collect::<Result<_, _>>()?;
    Ok(AgentList { items, next_cursor })
}

pub(crate) async fn queue_job(
    tx: &mut Tx,
    operation: AgentOperation,
    agent_id: &str,
    caller: &Caller,
    now: Timestamp,
) -> Result<()> {
    tx.enqueue_job(
        &new_id(prefix::JOB),
        operation,
        ResourceKind::Agent,
        agent_id,
        Some(&caller.request_id),
        now.as_millis(),
    )
    .await?;
    Ok(())
}

/// Drops this replica's cached record of the Agent once `tx` commits, so its next heartbeat
/// is judged against the record `tx` wrote.
pub(crate) fn forget_after_commit(app: &crate::app::App, tx: &mut Tx, agent_id: &str) {
    observed::forget_after_commit(tx, app.ingest.records().clone(), agent_id);
}
