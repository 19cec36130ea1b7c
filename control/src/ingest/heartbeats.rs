//! Taking one heartbeat in: the live view in memory, and the transitions written at once (an
//! Agent recorded paused whose VM is seen running, a new boot id, an Agent heard from again).

use std::sync::atomic::Ordering;

use control_api::Timestamp;
use control_api::agent::{Heartbeat, HeartbeatAck};
use control_api::agents::PeriodState;
use tracing::{debug, info};

use super::records::Known;
use super::{Ingest, IngestError, Live, Transition};
use crate::agents::{self, Cas};
use crate::clock::millis;
use crate::sync;

impl Ingest {
    /// Takes one heartbeat in, with its credential. Touches the database only for a transition.
    pub async fn heartbeat(
        &self,
        bearer: &str,
        beat: Heartbeat,
    ) -> Result<HeartbeatAck, IngestError> {
        let agent_id = self.authenticate_heartbeat(bearer).await?;
        self.heartbeat_of(&agent_id, beat).await
    }

    /// Takes one heartbeat of an authenticated Agent in.
    pub async fn heartbeat_of(
        &self,
        agent_id: &str,
        beat: Heartbeat,
    ) -> Result<HeartbeatAck, IngestError> {
        let now = self.clock.now().as_millis();
        let refused = |error| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            error
        };
        if beat
            .agent_id
            .as_deref()
            .is_some_and(|claimed| claimed != agent_id)
        {
            return Err(refused(IngestError::Forbidden(
                "this credential belongs to another Agent".to_owned(),
            )));
        }
        let Some(known) = self.records.known(&self.store, agent_id).await? else {
            return Err(refused(IngestError::Unauthorized(
                "agent credential refused: unknown or revoked",
            )));
        };
        if known.destroyed {
            return Err(refused(IngestError::Forbidden(format!(
                "agent {agent_id} is destroyed"
            ))));
        }
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let transition = self.observe(agent_id, &known, beat, now);
        if transition.any() {
            self.transition(agent_id, &known, transition, now).await?;
        }
        Ok(HeartbeatAck {
            heartbeat_interval_s: self.interval_s(),
        })
    }

    /// Updates the live view; returns what must be written at once.
    fn observe(&self, agent_id: &str, known: &Known, beat: Heartbeat, now: i64) -> Transition {
        let process_started =
            now - i64::try_from(beat.agent_uptime_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
        let recorded_paused = known.state == PeriodState::Paused && known.operation.is_none();
        let mut shard = sync::lock(self.shard(agent_id));
        let mut transition = Transition::default();
        match shard.get_mut(agent_id) {
            None => {
                transition.maybe_running = recorded_paused;
                shard.insert(
                    agent_id.to_owned(),
                    Live {
                        last_seen: now,
                        latest: beat,
                        process_started,
                        written_at: None,
                        beats_since_write: 1,
                        urgent: false,
                        unhealthy: false,
                        ignore_before: None,
                    },
                );
            }
            Some(live) => {
                if live.latest.boot_id != beat.boot_id {
                    transition.rebooted_from = Some(live.latest.boot_id.clone());
                }
                transition.healthy_again = live.unhealthy;
                transition.maybe_running = recorded_paused
                    && live
                        .ignore_before
                        .is_none_or(|before| process_started >= before);
                live.urgent |= live.latest.cloudflared.state != beat.cloudflared.state
                    || live.latest.slice.state != beat.slice.state;
                live.last_seen = now;
                live.process_started = process_started;
                live.latest = beat;
                live.beats_since_write = live.beats_since_write.saturating_add(1);
            }
        }
        transition
    }

    /// Writes a transition at once: the ledger first (the Agent row's lock), then liveness.
    async fn transition(
        &self,
        agent_id: &str,
        known: &Known,
        transition: Transition,
        now: i64,
    ) -> Result<(), IngestError> {
        let Some((row, process_started)) = ({
            let shard = sync::lock(self.shard(agent_id));
            shard
                .get(agent_id)
                .map(|live| (self.liveness_row(agent_id, live), live.process_started))
        }) else {
            return Ok(());
        };
        let mut tx = self.store.write().await?;
        let mut now_running = false;
        let mut ignore_before = None;
        if transition.maybe_running
            && let Some(open) = tx.open_period(agent_id).await?
        {
            let stopped_recently = now - open.started_at < millis(self.settings.stop_quiet);
            if open.state == PeriodState::Paused
                && stopped_recently
                && process_started < open.started_at
            {
                // An in-flight heartbeat from the process a stop just ended.
                ignore_before = Some(open.started_at);
            } else {
                now_running = agents::record_observed(
                    &mut tx,
                    self.records.clone(),
                    agent_id,
                    Cas::Observed {
                        from: PeriodState::Paused,
                        to: PeriodState::Running,
                    },
                    Timestamp::from_millis(now),
                )
                .await?
                .is_some();
            }
        }
        let written = tx.write_liveness(std::slice::from_ref(&row)).await?;
        tx.commit().await?;
        self.stats.transitions.fetch_add(1, Ordering::Relaxed);
        self.count_written(written.len());
        if let Some(live) = sync::lock(self.shard(agent_id)).get_mut(agent_id) {
            live.written_at = Some(now);
            live.beats_since_write = 0;
            live.urgent = false;
            live.unhealthy = false;
            live.ignore_before = ignore_before.or(live.ignore_before);
        }
        if now_running {
            info!(agent_id, account_id = %known.account_id, "agent seen running: its heartbeat records it running from now");
        }
        if let Some(from) = &transition.rebooted_from {
            info!(agent_id, account_id = %known.account_id, from_boot_id = %from, boot_id = %row.boot_id, "agent rebooted: new boot id");
        }
        if transition.healthy_again {
            info!(agent_id, account_id = %known.account_id, "agent healthy again: heartbeats resumed");
        }
        if ignore_before.is_some() {
            debug!(
                agent_id,
                "ignored a heartbeat from a process stopped moments ago"
            );
        }
        Ok(())
    }
}
