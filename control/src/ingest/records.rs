//! What this replica knows of each Agent's record (account, state, operation), so a heartbeat
//! is judged without reading the database. Kept fresh by following `agents.updated_at`, and
//! by [`Records::forget`] right after this replica changes a record itself.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use control_api::agents::{AgentOperation, PeriodState};

use crate::agents::RecordCache;
use crate::store::{AgentChange, DbText, Store, StoreError};
use crate::sync;

/// Changes are read this many at a time.
const PAGE: i64 = 1_000;
/// Changes are read again this far back: replicas' clocks and commit order differ slightly.
const OVERLAP_MS: i64 = 5_000;

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
    /// The newest `agents.updated_at` followed so far.
    through: AtomicI64,
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

    /// Follows the lifecycle changes any replica made since the last call. Returns the Agents
    /// destroyed meanwhile.
    pub(super) async fn follow(&self, store: &Store) -> Result<Vec<String>, StoreError> {
        // Paged by (updated_at, id): many Agents may change in one millisecond.
        let mut after = (
            (self.through.load(Ordering::Relaxed) - OVERLAP_MS).max(0),
            String::new(),
        );
        let mut destroyed = Vec::new();
        loop {
            let changes = store
                .read()
                .await?
                .agents_changed_since((after.0, &after.1), PAGE)
                .await?;
            let done = i64::try_from(changes.len()).unwrap_or(i64::MAX) < PAGE;
            if let Some(last) = changes.last() {
                after = (last.updated_at, last.id.clone());
            }
            let mut known = sync::write(&self.known);
            for change in &changes {
                if change.destroyed_at.is_some() {
                    known.remove(&change.id);
                    destroyed.push(change.id.clone());
                } else if known.contains_key(&change.id) {
                    known.insert(change.id.clone(), Known::from_change(change)?);
                }
            }
            drop(known);
            if done {
                break;
            }
        }
        self.through.fetch_max(after.0, Ordering::Relaxed);
        Ok(destroyed)
    }
}
