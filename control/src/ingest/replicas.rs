//! Replicas: each announces itself; the Agents of one that went silent are judged by another
//! (one at a time, under a lease) after a grace period for them to find another replica,
//! counted from the later of its going silent and this replica being available (its start, or
//! the end of its latest stall) plus the agents' longest backoff.

use std::time::Duration;

use tracing::warn;

use super::Ingest;
use crate::clock::millis;
use crate::store::StoreError;

impl Ingest {
    /// Announces this replica and, holding the lease, judges the Agents of replicas that went
    /// silent (after a grace period for those Agents to report to another replica).
    pub async fn judge_orphans(&self) -> Result<usize, StoreError> {
        let now = self.clock.now().as_millis();
        let timeout = millis(self.settings.replica_timeout);
        let mut tx = self.store.write().await?;
        tx.announce_replica(&self.replica_id, self.started_at, now)
            .await?;
        let leader = tx
            .acquire_lease("judge-orphans", &self.replica_id, now, now + 2 * timeout)
            .await?;
        tx.commit().await?;
        if !leader {
            return Ok(0);
        }
        let limit = millis(self.settings.silence_limit());
        let gone = self
            .store
            .read()
            .await?
            .silent_replicas(now - timeout)
            .await?;
        let mut flagged = 0;
        // Counted from this replica's start (or stall), not the old one's last sign of life:
        // Agents whose heartbeats failed meanwhile are backing off.
        let resumed = self.available_since() + millis(self.settings.resume_grace());
        for (replica, seen_at) in gone {
            if now < (seen_at + timeout + limit).max(resumed) {
                continue; // its Agents may still be finding another replica
            }
            let silent = self
                .store
                .read()
                .await?
                .silent_agents(&replica, now - limit)
                .await?;
            if silent.is_empty() && now - seen_at > millis(Duration::from_hours(24)) {
                let mut tx = self.store.write().await?;
                tx.forget_replica(&replica).await?;
                tx.commit().await?;
                continue;
            }
            for (agent_id, account_id, last_seen) in silent {
                let mut tx = self.store.write().await?;
                let marked = tx
                    .mark_unhealthy(&agent_id, &replica, now - limit, now)
                    .await?;
                tx.commit().await?;
                if marked {
                    flagged += 1;
                    warn!(
                        agent_id,
                        account_id,
                        silent_s = (now - last_seen) / 1_000,
                        gone_replica = %replica,
                        "agent unhealthy: silent since its replica went away"
                    );
                }
            }
        }
        Ok(flagged)
    }
}
