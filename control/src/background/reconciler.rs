//! The reconciler: compares each provider's view of the VMs with the ledger's and records what
//! the provider says where they disagree, at the instant it is noticed.
//!
//! A VM off (or gone) while recorded running is recorded paused; a VM running while recorded
//! paused is recorded running. Agents with an operation under way are left to it. One replica
//! at a time reconciles (a lease), since provider APIs have rate limits.

use std::time::Duration;

use control_api::agents::PeriodState;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::each;
use crate::agents::{self, Cas};
use crate::app::App;
use crate::clock::millis;
use crate::error::Result;
use crate::store::DbText;

/// Compares every live Agent with its provider once; returns how many were corrected.
pub async fn reconcile(app: &App, every: Duration) -> Result<usize> {
    let now = app.clock.now();
    let lease = millis(every.saturating_mul(2));
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
        let Some(cloud) = app.providers.get(&agent.provider) else {
            continue;
        };
        let on = match cloud.servers.get_server(&agent.provider_id).await {
            Ok(server) => server.map(|server| server.status.is_on()),
            Err(e) => {
                warn!(agent_id = %agent.id, error = %e, "reconciler: cannot read the VM's state");
                continue;
            }
        };
        let (from, to, why) = match (agent.state.as_str(), on) {
            ("running", Some(false)) => (
                PeriodState::Running,
                PeriodState::Paused,
                "the provider reports the VM off",
            ),
            ("running", None) => (
                PeriodState::Running,
                PeriodState::Paused,
                "the provider has no such VM",
            ),
            ("paused", Some(true)) => (
                PeriodState::Paused,
                PeriodState::Running,
                "the provider reports the VM running",
            ),
            _ => continue,
        };
        let mut tx = app.store.write().await?;
        let recorded = agents::record_observed(
            &mut tx,
            app.ingest.records().clone(),
            &agent.id,
            Cas::Observed { from, to },
            app.clock.now(),
        )
        .await?;
        tx.commit().await?;
        if let Some(recorded) = recorded {
            corrected += 1;
            let state = to.as_db();
            if to == PeriodState::Paused {
                warn!(agent_id = %agent.id, account_id = %recorded.owner, state, "reconciler: {why}; recorded from now");
            } else {
                info!(agent_id = %agent.id, account_id = %recorded.owner, state, "reconciler: {why}; recorded from now");
            }
        }
    }
    Ok(corrected)
}

/// Reconciles the ledger with the providers every `every`.
pub(super) async fn run(app: App, every: Duration, shutdown: watch::Receiver<bool>) {
    each(every, shutdown, || async {
        match reconcile(&app, every).await {
            Ok(0) => {}
            Ok(corrected) => debug!(corrected, "reconciler corrected agents"),
            Err(e) => error!(error = %e, "reconciling with the providers failed"),
        }
    })
    .await;
}
