//! The background work of `control serve`, each a task driven by a shutdown signal: the job
//! runner, the usage rollup (and the sweep of old Idempotency-Key records), ingestion's
//! upkeep, the reconciler and the sweeper of unowned provider resources. Each duty is an idempotent reconciler, safe to run on every
//! replica at once, twice, or after a crash, and to stop at any point.
//!
//! May call: the services (jobs, ledger, ingest, providers through the reconciler). Nothing
//! calls into here but the composition root.

mod ingest;
mod reconciler;
mod rollup;
mod sweeper;

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval};
use tracing::{debug, error, info};

use crate::app::App;
use crate::jobs;

pub use reconciler::{
    CloudPass, Paced, Pacing, Pass, paced_interval, reconcile, reconcile_paced, reconcile_pass,
};
pub use sweeper::{Orphan, sweep};

/// How often each duty runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Intervals {
    pub job_poll: Duration,
    pub rollup: Duration,
    /// How often the reconciler runs at most; it runs less often when its passes would
    /// spend more than `reconcile_budget_fraction` of a cloud's hourly request budget.
    pub reconcile: Duration,
    pub reconcile_budget_fraction: f64,
    pub sweep: Duration,
}

/// Starts every duty; each ends when `shutdown` changes.
pub fn spawn(app: &App, every: Intervals, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run_jobs(app.clone(), every.job_poll, shutdown.clone())),
        tokio::spawn(ingest::run(app.clone(), shutdown.clone())),
        tokio::spawn(ingest::reload_credentials(app.clone(), shutdown.clone())),
        tokio::spawn(reconciler::run(
            app.clone(),
            Pacing {
                every: every.reconcile,
                budget_fraction: every.reconcile_budget_fraction,
            },
            shutdown.clone(),
        )),
        tokio::spawn(rollup::run(app.clone(), every.rollup, shutdown.clone())),
        tokio::spawn(sweeper::run(app.clone(), every.sweep, shutdown.clone())),
    ]
}

/// Runs due jobs whenever one is queued here, and every `poll` for jobs queued by other
/// replicas or waiting for a retry.
async fn run_jobs(app: App, poll: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match jobs::run_due(&app).await {
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

/// Signs the audit chain's head every `period` when it has grown (see
/// `audit::checkpoint`); a damaged chain is reported at ERROR each time, never signed.
pub async fn checkpoints(
    app: App,
    signer: std::sync::Arc<crate::audit::checkpoint::Signer>,
    period: Duration,
    shutdown: watch::Receiver<bool>,
) {
    info!(public_key = %signer.public_key(), "audit checkpoints are signed with this key");
    each(period, shutdown, || async {
        if let Err(e) = crate::audit::checkpoint::make(&app.store, &signer, app.clock.now()).await {
            error!(error = %e, "signing an audit checkpoint failed; retrying on the next tick");
        }
    })
    .await;
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
