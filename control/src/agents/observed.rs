//! The one place that changes an Agent's observed state. A job the provider confirmed, a
//! heartbeat from a VM recorded paused, and the reconciler all go through
//! [`record_observed`]: the compare-and-set on the Agent's row (which takes its lock), the
//! owner re-read under that lock (a transfer may have just moved it), the ledger switched
//! from that instant on, and, once committed, this replica's cached record forgotten.

use std::sync::Arc;

use control_api::Timestamp;
use control_api::agents::{AgentOperation, PeriodState};

use crate::ledger::{self, ResourceRef};
use crate::store::{OperationOutcome, StoreError, Tx};

/// A cache of Agents' records that a change must invalidate (ingestion's, on each replica).
pub trait RecordCache: Send + Sync + 'static {
    fn forget(&self, agent_id: &str);
}

/// Which compare-and-set a change makes on the Agent's row.
#[derive(Clone, Copy, Debug)]
pub enum Cas<'a> {
    /// Seen in `to` while recorded `from`, with no operation under way.
    Observed { from: PeriodState, to: PeriodState },
    /// The provider confirmed `operation`, which leaves the Agent in `to` (`None`:
    /// destroyed); the VM's id, once it has one.
    Concluded {
        operation: AgentOperation,
        provider_id: Option<&'a str>,
        to: Option<PeriodState>,
    },
}

/// What a change recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The account the ledger attributes the change to.
    pub owner: String,
    /// The instant the ledger switched at (never before the open period's start).
    pub at: Timestamp,
}

/// Records the change `cas` describes from `at` on, if its compare-and-set still holds.
/// Returns `None`, having changed nothing, when it does not (another change won the race).
/// The caller commits `tx`.
pub async fn record_observed(
    tx: &mut Tx,
    cache: Arc<impl RecordCache>,
    agent_id: &str,
    cas: Cas<'_>,
    at: Timestamp,
) -> Result<Option<Recorded>, StoreError> {
    let now = at.as_millis();
    let (changed, to) = match cas {
        Cas::Observed { from, to } => (tx.observe_state(agent_id, from, to, now).await?, Some(to)),
        Cas::Concluded {
            operation,
            provider_id,
            to,
        } => {
            let outcome = OperationOutcome {
                provider_id,
                state: to,
                error: None,
            };
            let changed = tx
                .finish_operation(agent_id, operation, &outcome, now)
                .await?;
            (changed, to)
        }
    };
    if !changed {
        return Ok(None);
    }
    let owner = tx
        .agent_change(agent_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("agent {agent_id} vanished under its lock")))?
        .account_id;
    let at = if let Some(state) = to {
        ledger::switch(tx, ResourceRef::agent(agent_id), &owner, state, at).await?
    } else {
        let at = ledger::close(tx, ResourceRef::agent(agent_id), at).await?;
        tx.mark_destroyed(agent_id, at.as_millis()).await?;
        // Its VM is gone: nothing may heartbeat as it any more.
        tx.revoke_agent_credentials(agent_id, at.as_millis())
            .await?;
        at
    };
    forget_after_commit(tx, cache, agent_id);
    Ok(Some(Recorded { owner, at }))
}

/// Drops `cache`'s record of the Agent once `tx` commits: before, a concurrent reader would
/// only cache the old row again.
pub(super) fn forget_after_commit(tx: &mut Tx, cache: Arc<impl RecordCache>, agent_id: &str) {
    let id = agent_id.to_owned();
    tx.after_commit(move || cache.forget(&id));
}
