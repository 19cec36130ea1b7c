//! What this replica knows of each Agent's record (account, state, operation), so a heartbeat
//! is judged without reading the database. Kept fresh by following `agents.updated_at`, and
//! by [`Records::forget`] right after this replica changes a record itself.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use control_api::agents::{AgentOperation, PeriodState};

use crate::agents::RecordCache;
use crate::store::{AgentChange, DbText, Store, StoreError};
use crate::sync;

/// Changes are read this many at a time.
const PAGE: i64 = 1_000;
/// Changes are read again this far back: replicas' clocks and commit order differ slightly,
/// so a change may be committed after a newer one was read.
const OVERLAP_MS: i64 = 5_000;
/// Once the newest change followed was first read this long ago, only what comes after it is
/// read: a change committed late was stamped before that newest change and committed within
/// `OVERLAP_MS` of its stamp, so long before now. Without this, a burst of changes (thousands
/// of Agents changed in one second) would be read again every second until another came.
const QUIET_MS: i64 = 2 * OVERLAP_MS;

/// What this replica knows of an Agent's record.
#[derive(Clone, Debug)]
pub(super) struct Known {
    pub(super) account_id: String,
    pub(super) state: PeriodState,
    pub(super) operation: Option<AgentOperation>,
    pub(super) destroyed: bool,
}

impl Known {
    fn from_change(change: &AgentChange) -> Result<Self, StoreError> {
        Ok(Self {
            account_id: change.account_id.clone(),
            state: PeriodState::from_db(&change.state)?,
            operation: change
                .operation
                .as_deref()
                .map(AgentOperation::from_db)
                .transpose()?,
            destroyed: change.destroyed_at.is_some(),
        })
    }
}

#[derive(Debug, Default)]
pub struct Records {
    known: RwLock<HashMap<String, Known>>,
    newest: Mutex<Newest>,
}

/// The newest change followed so far: its `agents.updated_at` and Agent, and when (by this
/// replica's clock) it was first read.
#[derive(Clone, Debug, Default)]
struct Newest {
    updated_at: i64,
    id: String,
    read_at: i64,
}

/// What one following of the changes did.
#[derive(Debug, Default)]
pub(super) struct Followed {
    /// Agents destroyed meanwhile.
    pub(super) destroyed: Vec<String>,
    /// Changes read.
    pub(super) read: usize,
}

impl RecordCache for Records {
    fn forget(&self, agent_id: &str) {
        sync::write(&self.known).remove(agent_id);
    }
}

impl Records {
    /// What this replica knows of the Agent, read once if it is new to it.
    pub(super) async fn known(
        &self,
        store: &Store,
        agent_id: &str,
    ) -> Result<Option<Known>, StoreError> {
        if let Some(known) = sync::read(&self.known).get(agent_id) {
            return Ok(Some(known.clone()));
        }
        let Some(change) = store.read().await?.agent_change(agent_id).await? else {
            return Ok(None);
        };
        let known = Known::from_change(&change)?;
        sync::write(&self.known).insert(agent_id.to_owned(), known.clone());
        Ok(Some(known))
    }

    /// Learns records loaded in bulk, keeping any already known (read since, or followed).
    /// Only before following changes starts: a record loaded after a change was followed
    /// would stay stale.
    pub(super) fn preload(&self, records: Vec<(String, Known)>) {
        if records.is_empty() {
            return;
        }
        let mut known = sync::write(&self.known);
        for (agent_id, record) in records {
            known.entry(agent_id).or_insert(record);
        }
    }

    /// A snapshot of what is known, for judging many Agents at once.
    pub(super) fn with<T>(&self, f: impl FnOnce(&HashMap<String, Known>) -> T) -> T {
        f(&sync::read(&self.known))
    }

    /// Follows the lifecycle changes any replica made since the last call, at `now`.
    pub(super) async fn follow(&self, store: &Store, now: i64) -> Result<Followed, StoreError> {
        let newest = sync::lock(&self.newest).clone();
        // Paged by (updated_at, id): many Agents may change in one millisecond.
        let mut after = if now - newest.read_at < QUIET_MS {
            ((newest.updated_at - OVERLAP_MS).max(0), String::new())
        } else {
            (newest.updated_at, newest.id)
        };
        let mut followed = Followed::default();
        loop {
            let changes = store
                .read()
                .await?
                .agents_changed_since((after.0, &after.1), PAGE)
                .await?;
            followed.read += changes.len();
            let done = i64::try_from(changes.len()).unwrap_or(i64::MAX) < PAGE;
            if let Some(last) = changes.last() {
                after = (last.updated_at, last.id.clone());
            }
            let mut known = sync::write(&self.known);
            for change in &changes {
                if change.destroyed_at.is_some() {
                    known.remove(&change.id);
                    followed.destroyed.push(change.id.clone());
                } else if known.contains_key(&change.id) {
                    known.insert(change.id.clone(), Known::from_change(change)?);
                }
            }
            drop(known);
            if done {
                break;
            }
        }
        let mut held = sync::lock(&self.newest);
        if (after.0, after.1.as_str()) > (held.updated_at, held.id.as_str()) {
            *held = Newest {
                updated_at: after.0,
                id: after.1,
                read_at: now,
            };
        }
        Ok(followed)
    }
}
