//! The replica that served from this data dir before this one. A restarted `control` is a new
//! replica with a new id; the jobs its predecessor leased would wait for the lease to run out
//! (minutes) or for the predecessor to count as silent. A lock file in the data dir tells at
//! once that the predecessor is dead: the operating system releases the lock when a process
//! dies, however it dies, so holding it proves no earlier holder still runs. The holder names
//! itself in the file; whoever takes the lock next releases the leases of the id it finds.
//!
//! Several replicas may share one data dir (the local provider's VMs live there), so there
//! are several lock files, one per place (`replica.lock`, then `replica.1.lock` up to
//! `replica.15.lock`): a replica takes the first one free. A replica killed and started again
//! beside a live one finds the live one's place taken and its own free, and so takes over from
//! exactly the replica that died. It must never release the leases of a replica that may
//! still run, so without a lock it does nothing (a seventeenth replica on one data dir relies on
//! the silence rule of the job claim).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::app::App;

/// The first place's lock file in the data dir.
pub const LOCK_FILE: &str = "replica.lock";

/// How many replicas sharing one data dir each get a place.
const PLACES: usize = 16;

/// The lock file of place `place`.
pub fn lock_file(data_dir: &Path, place: usize) -> PathBuf {
    match place {
        0 => data_dir.join(LOCK_FILE),
        place => data_dir.join(format!("replica.{place}.lock")),
    }
}

/// The lock this replica holds on its place in the data dir, for as long as it is kept.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

/// Takes the first free place's lock in the data dir, releases the job leases of the replica
/// that held that place last, and names this replica in it. `None` when live processes hold
/// every place (or the locks cannot be used), which is logged and otherwise harmless.
pub async fn take_over(data_dir: &Path, app: &App) -> Option<Held> {
    for place in 0..PLACES {
        let path = lock_file(data_dir, place);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|file| match file.try_lock() {
                Ok(()) => Ok(Some(file)),
                Err(TryLockError::WouldBlock) => Ok(None),
                Err(TryLockError::Error(e)) => Err(e),
            });
        match file {
            Ok(Some(file)) => return Some(take_place(file, &path, app).await),
            Ok(None) => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot use the replica lock; a dead predecessor's jobs wait for it to count as silent");
                return None;
            }
        }
    }
    info!(
        data_dir = %data_dir.display(),
        places = PLACES,
        "other replicas serving from this data dir hold every place's lock; a dead predecessor's jobs wait for it to count as silent"
    );
    None
}

/// With `file`'s lock held: releases the leases of the replica it names, and names this one.
async fn take_place(mut file: File, path: &Path, app: &App) -> Held {
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
    Held(file)
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
