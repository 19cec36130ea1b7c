//! The background subsystems of `control serve`, each a task driven by a shutdown signal:
//! the job runner, the usage rollup, ingestion's upkeep and the reconciler. Each is safe to
//! run on every replica at once and to stop at any point.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval};
use tracing::{debug, error, info};

use crate::app::App;
use crate::{ledger, lifecycle, reconcile};

/// How long completed Idempotency-Key answers are kept.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_hours(24);

/// Runs due jobs whenever one is queued here, and every `poll` for jobs queued by other
/// replicas or waiting for a retry.
pub async fn run_jobs(app: App, poll: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match lifecycle::run_due_jobs(&app).await {
            Ok(0) => {}
            Ok(ran) => debug!(ran, "jobs ran"),
            Err(e) => error!(error = %e, "running jobs failed; retrying on the next poll"),
        }
        tokio::select! {
            () = app.jobs_queued.notified() => {}
            () = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => break,
        }
    }
    info!("job runner stopped");
}

/// Calls `work` at once and then every `period` until `shutdown` changes. A late tick is
/// delayed, never bunched up.
async fn each<F, Fut>(period: Duration, mut shutdown: watch::Receiver<bool>, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => break,
        }
        work().await;
    }
}

/// Rolls usage up every `every`, first at start, and forgets old Idempotency-Key answers.
pub async fn run_rollup(app: App, every: Duration, shutdown: watch::Receiver<bool>) {
    each(every, shutdown, || roll_up(&app)).await;
    info!("usage rollup stopped");
}

async fn roll_up(app: &App) {
    let now = app.clock.now();
    match ledger::rollup(&app.store, now).await {
        Ok(summary) => debug!(rows = summary.rows, "usage rolled up"),
        Err(e) => error!(error = %e, "usage rollup failed; retrying on the next tick"),
    }
    let before = now.as_millis() - i64::try_from(IDEMPOTENCY_RETENTION.as_millis()).unwrap_or(0);
    let purged = async {
        let mut tx = app.store.write().await?;
        let purged = tx.purge_idempotency_keys(before).await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(purged)
    }
    .await;
    if let Err(e) = purged {
        error!(error = %e, "forgetting old idempotency keys failed");
    }
}

/// Ingestion's upkeep, every second: follow lifecycle changes, write liveness behind, judge
/// the Agents this replica hears from; every few seconds announce the replica and judge the
/// Agents of replicas that went away. At shutdown, writes everything behind.
pub async fn run_ingest(app: App, shutdown: watch::Receiver<bool>) {
    let mut tick: u64 = 0;
    each(Duration::from_secs(1), shutdown, || {
        let orphans_too = tick.is_multiple_of(5);
        tick += 1;
        ingest_upkeep(&app, orphans_too)
    })
    .await;
    match app.ingest.flush(&app, true).await {
        Ok(rows) => info!(rows, "liveness written behind at shutdown"),
        Err(e) => error!(error = %e, "writing liveness at shutdown failed"),
    }
}

async fn ingest_upkeep(app: &App, orphans_too: bool) {
    if let Err(e) = app.ingest.follow_changes(app).await {
        error!(error = %e, "following lifecycle changes failed");
    }
    if let Err(e) = app.ingest.flush(app, false).await {
        error!(error = %e, "writing liveness behind failed; will retry");
    }
    if let Err(e) = app.ingest.judge(app).await {
        error!(error = %e, "judging agents' health failed");
    }
    if orphans_too && let Err(e) = app.ingest.judge_orphans(app).await {
        error!(error = %e, "announcing this replica or judging orphaned agents failed");
    }
}

/// Reconciles the ledger with the providers every `every`.
pub async fn run_reconciler(app: App, every: Duration, shutdown: watch::Receiver<bool>) {
    each(every, shutdown, || async {
        match reconcile::reconcile(&app, every).await {
            Ok(0) => {}
            Ok(corrected) => debug!(corrected, "reconciler corrected agents"),
            Err(e) => error!(error = %e, "reconciling with the providers failed"),
        }
    })
    .await;
}
