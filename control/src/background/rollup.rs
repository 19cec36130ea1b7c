//! The usage rollup, and the sweep of Idempotency-Key answers past their retention.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info};

use super::each;
use crate::app::App;
use crate::clock::millis;
use crate::ledger;

/// How long completed Idempotency-Key answers are kept.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_hours(24);

/// Rolls usage up every `every`, first at start, and forgets old Idempotency-Key answers.
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
    let before = now.as_millis() - millis(IDEMPOTENCY_RETENTION);
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
