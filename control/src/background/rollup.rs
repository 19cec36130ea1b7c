//! The usage rollup, and the sweep of Idempotency-Key answers past their retention and of
//! claims stranded past their lease.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info};

use super::each;
use crate::app::App;
use crate::{idempotency, ledger};

/// Rolls usage up every `every`, first at start, and forgets old Idempotency-Key answers and
/// stranded claims.
pub(super) async fn run(app: App, every: Duration, shutdown: watch::Receiver<bool>) {
    each(every, shutdown, || roll_up(&app)).await;
    info!("usage rollup stopped");
}

async fn roll_up(app: &App) {
    let now = app.clock.now();
    match ledger::rollup(&app.store, now).await {
        Ok(summary) => debug!(rows = summary.rows, "usage rolled up"),
        Err(e) => error!(error = %e, "usage rollup failed; retrying on the next tick"),
    }
    match idempotency::purge(&app.store, now).await {
        Ok(0) => {}
        Ok(purged) => debug!(purged, "idempotency keys forgotten"),
        Err(e) => error!(error = %e, "forgetting old idempotency keys failed"),
    }
}
