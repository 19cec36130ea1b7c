//! Health judged from silence: a running Agent this replica hears from that stays silent for
//! `unhealthy_after` intervals is flagged unhealthy (an INFO line, no period change).
//!
//! Control's own unavailability is not the Agents' silence: a heartbeat that failed while this
//! replica was starting or stalled sends the agent into backoff, so silence from before this
//! replica became available counts only from then plus the agents' longest backoff.

use control_api::agents::PeriodState;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::Ingest;
use crate::clock::millis;
use crate::store::StoreError;
use crate::sync;

impl Ingest {
    /// Since when this replica has been available: its start, or the end of its latest stall.
    pub fn available_since(&self) -> i64 {
        self.available_since.load(Ordering::Relaxed)
    }

    /// Records a health judgement at `now`; a gap of `stall_after` or more since the last one
    /// means this replica was stalled, and it is available again only from `now`. Returns
    /// since when it has been available.
    fn note_judged(&self, now: i64) -> i64 {
        let before = self.last_judged.swap(now, Ordering::Relaxed);
        if before > 0 && now - before >= millis(self.settings.stall_after) {
            self.available_since.fetch_max(now, Ordering::Relaxed);
            warn!(
                stalled_s = (now - before) / 1_000,
                "this replica was stalled: agents' silence is counted again from now"
            );
        }
        self.available_since()
    }

    /// Flags the running Agents this replica judges that have been silent too long.
    pub async fn judge(&self) -> Result<usize, StoreError> {
        let now = self.clock.now().as_millis();
        let limit = millis(self.settings.silence_limit());
        let available_since = self.note_judged(now);
        // Started or stalled lately: Agents not heard since then may be backing off.
        let resuming = now < available_since + millis(self.settings.resume_grace());
        let silent_since = now - limit;
        let mut silent = Vec::new();
        self.records.with(|known| {
            for shard in &*self.shards {
                for (agent_id, live) in sync::lock(shard).iter() {
                    let running = known.get(agent_id).is_some_and(|k| {
                        k.state == PeriodState::Running && k.operation.is_none() && !k.destroyed
                    });
                    if running
                        && !live.unhealthy
                        && live.written_at.is_some()
                        && live.last_seen < silent_since
                        && (live.last_seen >= available_since || !resuming)
                    {
                        silent.push((agent_id.clone(), live.last_seen));
                    }
                }
            }
        });
        let mut flagged = 0;
        for (agent_id, last_seen) in silent {
            let mut tx = self.store.write().await?;
            let marked = tx
                .mark_unhealthy(&agent_id, &self.replica_id, silent_since, now)
                .await?;
            tx.commit().await?;
            let mut shard = sync::lock(self.shard(&agent_id));
            if marked {
                flagged += 1;
                if let Some(live) = shard.get_mut(&agent_id) {
                    live.unhealthy = true;
                }
                drop(shard);
                info!(
                    agent_id,
                    silent_s = (now - last_seen) / 1_000,
                    "agent unhealthy: no heartbeat for {} intervals",
                    self.settings.unhealthy_after
                );
            } else {
                // Another replica judges it now, or heard from it since.
                shard.remove(&agent_id);
            }
        }
        Ok(flagged)
    }
}
