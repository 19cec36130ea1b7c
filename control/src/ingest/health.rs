//! Health judged from silence: a running Agent this replica hears from that stays silent for
//! `unhealthy_after` intervals is flagged unhealthy (an INFO line, no period change).

use control_api::agents::PeriodState;
use tracing::info;

use super::Ingest;
use crate::clock::millis;
use crate::store::StoreError;
use crate::sync;

impl Ingest {
    /// Flags the running Agents this replica judges that have been silent too long.
    pub async fn judge(&self) -> Result<usize, StoreError> {
        let now = self.clock.now().as_millis();
        let limit = millis(self.settings.silence_limit());
        if now < self.started_at + limit {
            return Ok(0); // just started: give every Agent a chance to report in
        }
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
