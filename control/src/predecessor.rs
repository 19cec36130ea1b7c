//! The replica that served from this data dir before this one. A restarted `control` is a new
//! replica with a new id; the jobs its predecessor leased would wait for the lease to run out
//! (minutes) or for the predecessor to count as silent. A lock file in the data dir tells at
//! once that the predecessor is dead: the operating system releases the lock when a process
//! dies, however it dies, so holding it proves no earlier holder still runs. The holder names
//! itself in the file; whoever takes the lock next releases the leases of the id it finds.
//!
//! Several replicas may share one data dir (the local provider's VMs live there): only one of
//! them holds the lock, and the others rely on the silence rule of the job claim. It must
//! never release the leases of a replica that may still run, so without the lock it does
//! nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use tracing::{info, warn};

use crate::app::App;

/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "replica.lock";

/// The lock this replica holds on its data dir, for as long as it is kept.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

/// Takes the data dir's lock when free, releases the job leases of the replica that held it
/// last, and names this replica in it. `None` when another live process holds the lock (or it
/// cannot be used), which is logged and otherwise harmless.
pub async fn take_over(data_dir: &Path, app: &App) -> Option<Held> {
    let path = data_dir.join(LOCK_FILE);
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the replica lock; a dead predecessor's jobs wait for it to count as silent");
            return None;
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            info!(path = %path.display(), "another replica serves from this data dir and holds its lock");
            return None;
        }
        Err(TryLockError::Error(e)) => {
            warn!(path = %path.display(), error = %e, "cannot lock the replica lock; a dead predecessor's jobs wait for it to count as silent");
            return None;
        }
    }
    let mut before = String::new();
    if let Err(e) = file.read_to_string(&mut before) {
        warn!(path = %path.display(), error = %e, "cannot read the replica lock");
    }
    let before = before.trim();
    if !before.is_empty() && before != app.replica_id {
        release(app, before).await;
    }
    let named = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", app.replica_id))
        .and_then(|()| file.sync_data());
    if let Err(e) = named {
        warn!(path = %path.display(), error = %e, "cannot name this replica in the replica lock");
    }
    Some(Held(file))
}

/// Releases the job leases of `dead`, which held the lock before and so no longer runs.
async fn release(app: &App, dead: &str) {
    let released = async {
        let mut tx = app.store.write().await?;
        let released = tx.release_job_leases(dead).await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(released)
    }
    .await;
    match released {
        Ok(0) => {}
        Ok(jobs) => info!(
            predecessor = dead,
            jobs, "took over the jobs of the replica that served from this data dir before"
        ),
        Err(e) => warn!(
            predecessor = dead,
            error = %e,
            "cannot release the jobs of the previous replica; they wait for it to count as silent"
        ),
    }
}
