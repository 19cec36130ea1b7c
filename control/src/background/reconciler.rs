//! The reconciler: compares each provider's view of the VMs with the ledger's and records what
//! the provider says where they disagree, at the instant it is noticed.
//!
//! A VM off (or gone) while recorded running is recorded paused; a VM running while recorded
//! paused is recorded running. Agents with an operation under way are left to it. One replica
//! at a time reconciles (a lease), since provider APIs have rate limits: each cloud's servers
//! are read by our label a page at a time (Hetzner: 50 a call), never one call per Agent.

use std::collections::BTreeMap;
use std::time::Duration;

use control_api::agents::PeriodState;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::each;
use crate::agents::{self, Cas};
use crate::app::App;
use crate::clock::millis;
use crate::error::Result;
use crate::providers::{Cloud, KIND_LABEL, Labels, ProviderError};
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
    let mut power: BTreeMap<&str, Option<BTreeMap<String, bool>>> = BTreeMap::new();
    let mut corrected = 0;
    for agent in agents {
        let Some(cloud) = app.providers.get(&agent.provider) else {
            continue;
        };
        if !power.contains_key(cloud.name) {
            let census = match servers_on(cloud).await {
                Ok(census) => Some(census),
                Err(e) => {
                    warn!(provider = cloud.name, error = %e, "reconciler: cannot list the VMs");
                    None
                }
            };
            power.insert(cloud.name, census);
        }
        let Some(Some(census)) = power.get(cloud.name) else {
            continue;
        };
        let on = census.get(&agent.provider_id).copied();
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

/// Whether each of the cloud's Agent servers is on, by server id, read a page at a time.
async fn servers_on(cloud: &Cloud) -> Result<BTreeMap<String, bool>, ProviderError> {
    let selector = Labels::from([(KIND_LABEL.to_owned(), "agent".to_owned())]);
    let mut census = BTreeMap::new();
    let mut page: Option<String> = None;
    loop {
        let found = cloud
            .servers
            .list_servers(&selector, page.as_deref())
            .await?;
        census.extend(found.items.into_iter().map(|s| (s.id, s.status.is_on())));
        match found.next {
            Some(next) => page = Some(next),
            None => return Ok(census),
        }
    }
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
