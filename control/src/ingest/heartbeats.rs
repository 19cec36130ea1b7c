//! Taking one heartbeat in: the live view in memory, and the transitions written at once (an
//! Agent recorded paused whose VM is seen running, a new boot id, an Agent heard from again).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use control_api::Timestamp;
use control_api::agent::{Heartbeat, HeartbeatAck};
use control_api::agents::PeriodState;
use tracing::{debug, info};

use super::records::Known;
use super::{Ingest, IngestError, Live, Transition};
use crate::agents::{self, Cas};
use crate::clock::millis;
use crate::ledger::ResourceRef;
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
        observe(
            &mut sync::lock(self.shard(agent_id)),
            agent_id,
            known,
            beat,
            now,
        )
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
            && let Some(open) = tx.open_period(ResourceRef::agent(agent_id)).await?
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
        if transition.support_changed {
            debug!(agent_id, tunnel_state = %row.tunnel_state, slice_state = %row.slice_state, "agent's support view changed: written at once");
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

/// Where a clone's copy stands, if the heartbeat is a clone's: a clone's job waits on it.
fn clone_state(beat: &Heartbeat) -> Option<control_api::agent::CloneState> {
    beat.clone.as_ref().map(|report| report.state)
}

/// Whether what support sees changed between two heartbeats of one Agent: tunnel or slice
/// state, tunnel restarts, crash loop or last exit, agent or image version. Figures that move
/// each heartbeat (free space, connections, uptime) are not: they are written behind.
fn support_changed(before: &Heartbeat, after: &Heartbeat) -> bool {
    let (was, is) = (&before.cloudflared, &after.cloudflared);
    was.state != is.state
        || was.restarts != is.restarts
        || was.crash_loop != is.crash_loop
        || was.last_exit != is.last_exit
        || before.slice.state != after.slice.state
        || before.agent_version != after.agent_version
        || before.image_version != after.image_version
}

/// What one heartbeat changes in an Agent's live view (`shard` holds it), and which of those
/// changes must be written at once: the first heartbeat or one from a process started after a
/// stop of an Agent recorded paused (it may be running), a new boot id, an Agent heard from
/// again after being judged unhealthy, a change support sees ([`support_changed`]). A clone
/// state change is marked urgent for the next flush.
fn observe(
    shard: &mut HashMap<String, Live>,
    agent_id: &str,
    known: &Known,
    beat: Heartbeat,
    now: i64,
) -> Transition {
    let process_started =
        now - i64::try_from(beat.agent_uptime_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let recorded_paused = known.state == PeriodState::Paused && known.operation.is_none();
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
            transition.support_changed = support_changed(&live.latest, &beat);
            live.urgent |= clone_state(&live.latest) != clone_state(&beat);
            live.last_seen = now;
            live.process_started = process_started;
            live.latest = beat;
            live.beats_since_write = live.beats_since_write.saturating_add(1);
        }
    }
    transition
}

#[cfg(test)]
mod tests {
    use control_api::agents::AgentOperation;
    use serde_json::json;

    use super::*;

    const AGENT: &str = "agt_1";

    fn beat(boot_id: &str, uptime_s: u64, tunnel: &str) -> Heartbeat {
        serde_json::from_value(json!({
            "agent_id": AGENT,
            "boot_id": boot_id,
            "sequence": 1,
            "agent_version": "0.1.0",
            "image_version": "2026.11.0",
            "agent_uptime_s": uptime_s,
            "cloudflared": {"state": tunnel, "ready_connections": 4, "restarts": 0, "crash_loop": false},
            "slice": {"state": "mounted", "free_bytes": 1000, "total_bytes": 2000},
            "host": {"cpus": 2, "load_centi": [1, 2, 3], "memory_total_bytes": 4,
                     "memory_available_bytes": 2, "root_free_bytes": 9, "uptime_s": 100}
        }))
        .unwrap()
    }

    fn known(state: PeriodState, operation: Option<AgentOperation>) -> Known {
        Known {
            account_id: "acc_1".to_owned(),
            state,
            operation,
            destroyed: false,
        }
    }

    fn summary(t: &Transition) -> (Option<&str>, bool, bool) {
        (t.rebooted_from.as_deref(), t.healthy_again, t.maybe_running)
    }

    #[test]
    fn the_first_heartbeat_of_an_agent_recorded_paused_may_mean_running() {
        let mut shard = HashMap::new();
        let paused = known(PeriodState::Paused, None);
        let t = observe(&mut shard, AGENT, &paused, beat("b1", 5, "ready"), 100_000);
        assert_eq!(summary(&t), (None, false, true));
        let live = &shard[AGENT];
        assert_eq!((live.last_seen, live.process_started), (100_000, 95_000));
        assert_eq!((live.written_at, live.beats_since_write), (None, 1));

        // Running already, or paused with an operation in flight: nothing to write.
        for quiet in [
            known(PeriodState::Running, None),
            known(PeriodState::Paused, Some(AgentOperation::Stop)),
            known(PeriodState::Paused, Some(AgentOperation::Provision)),
        ] {
            let mut shard = HashMap::new();
            let t = observe(&mut shard, AGENT, &quiet, beat("b1", 5, "ready"), 100_000);
            assert!(!t.any(), "{quiet:?}");
        }
    }

    #[test]
    fn a_new_boot_id_and_a_return_from_silence_are_written_at_once() {
        let mut shard = HashMap::new();
        let running = known(PeriodState::Running, None);
        observe(&mut shard, AGENT, &running, beat("b1", 5, "ready"), 100_000);
        let same = observe(
            &mut shard,
            AGENT,
            &running,
            beat("b1", 35, "ready"),
            130_000,
        );
        assert!(!same.any());
        assert_eq!(shard[AGENT].beats_since_write, 2);

        let rebooted = observe(&mut shard, AGENT, &running, beat("b2", 1, "ready"), 160_000);
        assert_eq!(summary(&rebooted), (Some("b1"), false, false));

        shard.get_mut(AGENT).unwrap().unhealthy = true;
        let back = observe(
            &mut shard,
            AGENT,
            &running,
            beat("b2", 91, "ready"),
            250_000,
        );
        assert_eq!(summary(&back), (None, true, false));
        assert_eq!(shard[AGENT].last_seen, 250_000);
    }

    #[test]
    fn heartbeats_from_the_process_a_stop_ended_are_not_a_start() {
        let mut shard = HashMap::new();
        let running = known(PeriodState::Running, None);
        observe(
            &mut shard,
            AGENT,
            &running,
            beat("b1", 100, "ready"),
            100_000,
        );
        // The Agent was stopped at 150 s: its old process (started at 0 s) is ignored...
        shard.get_mut(AGENT).unwrap().ignore_before = Some(150_000);
        let paused = known(PeriodState::Paused, None);
        let late = observe(
            &mut shard,
            AGENT,
            &paused,
            beat("b1", 155, "ready"),
            155_000,
        );
        assert!(
            !late.maybe_running,
            "an in-flight beat of the stopped process"
        );
        // ...a process started after the stop is a VM running again.
        let fresh = observe(&mut shard, AGENT, &paused, beat("b1", 2, "ready"), 160_000);
        assert!(fresh.maybe_running);
    }

    #[test]
    fn what_support_sees_is_written_at_once_and_figures_behind() {
        let mut shard = HashMap::new();
        let running = known(PeriodState::Running, None);
        observe(&mut shard, AGENT, &running, beat("b1", 5, "ready"), 100_000);
        let t = observe(
            &mut shard,
            AGENT,
            &running,
            beat("b1", 35, "unready"),
            130_000,
        );
        assert!(t.support_changed, "a tunnel state change");
        // Free space and connections move each heartbeat: written behind.
        let mut figures = beat("b1", 65, "unready");
        figures.slice.free_bytes = Some(10);
        figures.cloudflared.ready_connections = 1;
        let t = observe(&mut shard, AGENT, &running, figures, 160_000);
        assert!(!t.any(), "{t:?}");
        assert!(!shard[AGENT].urgent);
        // A restart between two heartbeats that both say ready is still seen.
        let mut restarted = beat("b1", 95, "unready");
        restarted.cloudflared.restarts = 1;
        restarted.cloudflared.last_exit = Some(137);
        let t = observe(&mut shard, AGENT, &running, restarted, 190_000);
        assert!(t.support_changed);
        let mut slice = beat("b1", 125, "unready");
        slice.cloudflared.restarts = 1;
        slice.cloudflared.last_exit = Some(137);
        slice.slice.state = control_api::agent::SliceState::Missing;
        let t = observe(&mut shard, AGENT, &running, slice, 220_000);
        assert!(t.support_changed, "a slice state change");
    }
}
