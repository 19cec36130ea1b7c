//! Ingestion's upkeep on this replica.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use super::each;
use crate::app::App;

/// Ingestion's upkeep, every second: follow lifecycle changes, write liveness behind, judge
/// the Agents this replica hears from; every few seconds announce the replica and judge the
/// Agents of replicas that went away. At shutdown, writes everything behind.
pub(super) async fn run(app: App, shutdown: watch::Receiver<bool>) {
    let mut tick: u64 = 0;
    each(Duration::from_secs(1), shutdown, || {
        let orphans_too = tick.is_multiple_of(5);
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
