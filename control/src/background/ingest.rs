//! Ingestion's upkeep on this replica.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info};

use super::each;
use crate::app::App;

/// Ingestion's upkeep, every second: follow lifecycle changes, write liveness behind, judge
/// the Agents this replica hears from; every few seconds (a third of the replica timeout, 5 s
/// at most) announce the replica and judge the Agents of replicas that went away. At shutdown,
/// writes everything behind. First of all, unless told not to, loads the credentials in force
/// with their Agents' records (before following changes, which keeps those records fresh).
pub(super) async fn run(app: App, shutdown: watch::Receiver<bool>) {
    if app.settings.ingest.preload_credentials {
        let started = std::time::Instant::now();
        match app.ingest.preload_credentials().await {
            Ok(loaded) => info!(
                credentials = loaded.credentials,
                millis = started.elapsed().as_millis(),
                "agent credentials loaded"
            ),
            Err(e) => {
                error!(error = %e, "loading agent credentials failed; each is read on its first use");
            }
        }
    }
    // Announced at least three times per replica timeout (every 5 s at most): a replica
    // silent past the timeout is taken for gone, and its job leases are claimed by the others.
    let announce_every = (app.settings.ingest.replica_timeout.as_secs() / 3).clamp(1, 5);
    let mut tick: u64 = 0;
    each(Duration::from_secs(1), shutdown, || {
        let orphans_too = tick.is_multiple_of(announce_every);
        tick += 1;
        ingest_upkeep(&app, orphans_too)
    })
    .await;
    match app.ingest.flush(true).await {
        Ok(rows) => info!(rows, "liveness written behind at shutdown"),
        Err(e) => error!(error = %e, "writing liveness at shutdown failed"),
    }
}

async fn ingest_upkeep(app: &App, orphans_too: bool) {
    if let Err(e) = app.ingest.follow_changes().await {
        error!(error = %e, "following lifecycle changes failed");
    }
    if let Err(e) = app.ingest.flush(false).await {
        error!(error = %e, "writing liveness behind failed; will retry");
    }
    if let Err(e) = app.ingest.judge().await {
        error!(error = %e, "judging agents' health failed");
    }
    if orphans_too && let Err(e) = app.ingest.judge_orphans().await {
        error!(error = %e, "announcing this replica or judging orphaned agents failed");
    }
}

/// Loads the credentials in force again every half `credential_ttl`, so no cached copy gets
/// too old to trust while the database answers, and revocations made on other replicas end
/// here within `credential_ttl`. The first load is `run`'s, at start.
pub(super) async fn reload_credentials(app: App, mut shutdown: watch::Receiver<bool>) {
    if !app.settings.ingest.preload_credentials {
        return;
    }
    let period = (app.settings.ingest.credential_ttl / 2).max(std::time::Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => break,
        }
        match app.ingest.reload_credentials().await {
            Ok(loaded) if loaded.forgotten > 0 => debug!(
                credentials = loaded.credentials,
                forgotten = loaded.forgotten,
                "agent credentials reloaded"
            ),
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "reloading agent credentials failed; copies too old are read again one by one");
            }
        }
    }
}
