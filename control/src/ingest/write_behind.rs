//! Writing liveness behind: the latest heartbeat per Agent goes to the database in batches,
//! at most once per `write_every` heartbeats per Agent, plus at the next flush when a clone's
//! copy state changes (what support sees is written at once, as a transition). A liveness row is only replaced by a newer one, so custody of an Agent
//! follows it to whichever replica hears it.

use std::sync::atomic::Ordering;

use super::{Ingest, Live, slice_text, tunnel_text};
use crate::clock::millis;
use crate::store::{LIVENESS_BATCH, LivenessRow, StoreError};
use crate::sync;

impl Ingest {
    /// Writes behind what is due: new Agents (custody), state changes, and Agents unwritten
    /// for `write_every` heartbeats; with `everything`, all that changed (at shutdown).
    pub async fn flush(&self, everything: bool) -> Result<usize, StoreError> {
        let now = self.clock.now().as_millis();
        let due_before = now - millis(self.settings.write_period());
        let mut rows = Vec::new();
        for shard in &*self.shards {
            for (agent_id, live) in sync::lock(shard).iter() {
                let due = live.written_at.is_none()
                    || live.urgent
                    || (live.beats_since_write > 0
                        && (everything || live.written_at.is_some_and(|at| at <= due_before)));
                if due {
                    rows.push(self.liveness_row(agent_id, live));
                }
            }
        }
        let mut total = 0;
        for chunk in rows.chunks(LIVENESS_BATCH) {
            let mut tx = self.store.write().await?;
            let written = tx.write_liveness(chunk).await?;
            tx.commit().await?;
            total += written.len();
            self.count_written(written.len());
            let written: std::collections::HashSet<&str> =
                written.iter().map(String::as_str).collect();
            for row in chunk {
                let mut shard = sync::lock(self.shard(&row.agent_id));
                if written.contains(row.agent_id.as_str()) {
                    if let Some(live) = shard.get_mut(&row.agent_id) {
                        live.written_at = Some(now);
                        live.beats_since_write = 0;
                        live.urgent = false;
                    }
                } else {
                    // Another replica heard from it more recently: it is that replica's now.
                    shard.remove(&row.agent_id);
                }
            }
        }
        Ok(total)
    }

    pub(super) fn count_written(&self, rows: usize) {
        self.stats
            .liveness_rows_written
            .fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn liveness_row(&self, agent_id: &str, live: &Live) -> LivenessRow {
        LivenessRow {
            agent_id: agent_id.to_owned(),
            custodian: self.replica_id.clone(),
            last_seen_at: live.last_seen,
            boot_id: live.latest.boot_id.clone(),
            sequence: i64::try_from(live.latest.sequence).unwrap_or(i64::MAX),
            agent_version: live.latest.agent_version.clone(),
            tunnel_state: tunnel_text(live.latest.cloudflared.state).to_owned(),
            slice_state: slice_text(live.latest.slice.state).to_owned(),
            report: serde_json::to_string(&live.latest).unwrap_or_default(),
            unhealthy_since: None,
        }
    }
}
