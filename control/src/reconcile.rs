//! The reconciler: compares each provider's view of the VMs with the ledger's and records what
//! the provider says where they disagree, at the instant it is noticed.
//!
//! A VM off (or gone) while recorded running is recorded paused; a VM running while recorded
//! paused is recorded running. Agents with an operation under way are left to it. One replica
//! at a time reconciles (a lease), since provider APIs have rate limits.

use std::time::Duration;

use control_api::agents::PeriodState;
use tracing::{info, warn};

use crate::app::App;
use crate::error::Result;
use crate::ledger;
use crate::providers::PowerState;

/// Compares every live Agent with its provider once; returns how many were corrected.
pub async fn reconcile(app: &App, every: Duration) -> Result<usize> {
    let now = app.clock.now();
    let lease = i64::try_from(every.saturating_mul(2).as_millis()).unwrap_or(i64::MAX);
    let mut tx = app.store.write().await?;
    let leader = tx
        .acquire_lease(
            "reconciler",
            &app.replica_id,
            now.as_millis(),
            now.as_millis() + lease,
        )
        .await?;
    tx.commit().await?;
    if !leader {
        return Ok(0);
    }
    let agents = app.store.read().await?.reconcilable_agents().await?;
    let mut corrected = 0;
    for agent in agents {
        let Some(provider) = app.providers.get(&agent.provider) else {
            continue;
        };
        let power = match provider.power_state(&agent.provider_id).await {
            Ok(power) => power,
            Err(e) => {
                warn!(agent_id = %agent.id, error = %e, "reconciler: cannot read the VM's power state");
                continue;
            }
        };
        let (to, why) = match (agent.state.as_str(), power) {
            ("running", Some(PowerState::Off)) => {
                (PeriodState::Paused, "the provider reports the VM off")
            }
            ("running", None) => (PeriodState::Paused, "the provider has no such VM"),
            ("paused", Some(PowerState::Running)) => {
                (PeriodState::Running, "the provider reports the VM running")
            }
            _ => continue,
        };
        let at = app.clock.now();
        let mut tx = app.store.write().await?;
        let to_text = match to {
            PeriodState::Running => "running",
            PeriodState::Paused => "paused",
        };
        if tx
            .observe_state(&agent.id, &agent.state, to_text, at.as_millis())
            .await?
        {
            // The owner as of now, under the row lock: a transfer may have moved it meanwhile.
            let owner = tx
                .agent_change(&agent.id)
                .await?
                .map_or_else(|| agent.account_id.clone(), |a| a.account_id);
            ledger::switch(&mut tx, &agent.id, &owner, to, at).await?;
            tx.commit().await?;
            app.ingest.forget(&agent.id);
            corrected += 1;
            let state = to_text;
            if to == PeriodState::Paused {
                warn!(agent_id = %agent.id, account_id = %agent.account_id, state, "reconciler: {why}; recorded from now");
            } else {
                info!(agent_id = %agent.id, account_id = %agent.account_id, state, "reconciler: {why}; recorded from now");
            }
        }
    }
    Ok(corrected)
}
