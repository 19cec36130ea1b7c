//! `vm-agent clone-slice`: a clone's first boot copies the source Agent's slice into its own.
//!
//! Hetzner cannot copy volumes, so a clone boots with a fresh, empty volume and control
//! attaches the source's volume to it afterwards (`[clone_from]` names its device, or a
//! directory where it is mounted). This command waits for this VM's slice volume and for the
//! source, copies the source's slice into a staging directory on the slice's volume, then
//! moves the copy into the slice, and keeps a progress file beside it that `vm-agent run`
//! reports in heartbeats (see [`record`]). Control detaches the source's volume once it reads
//! `done`.
//!
//! It runs in a unit of its own (`vm-agent-clone.service`): mounting a file system and keeping
//! owners and setuid bits take rights that `vm-agent run`'s hardened unit must not have.
//!
//! What it must never do: write anything while the slice's volume is not mounted (that would
//! be the root disk), write to the source, or lose what is in the slice: a slice that is not
//! empty when the copy is moved in is kept beside it. A crash anywhere leaves a state from which
//! a rerun reaches the same final tree: an unfinished copy is thrown away and made again, a
//! finished one (`staged` in the record, after a sync) is only moved in. A `done` record makes
//! every later run a no-op; a `failed` one is final (the record says why).

pub mod copy;
pub mod record;
pub mod source;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_api::agent::CloneState;
use log::Level;

use crate::clock::wall_now;
use crate::config::{CloneFrom, CloneSource, Config, Slice};
use crate::logging::ids;
use crate::{event, slice};
use copy::{Copier, CopyError, Totals};
use record::Record;
use source::{Mounted, SourceError};

/// How often the slice's volume and the source are looked for while they are not there.
const POLL: Duration = Duration::from_secs(2);
/// The staging directory's name, at the root of the slice's volume.
pub const STAGING: &str = ".vm-agent-clone-staging";
/// The most often the progress file is rewritten during the copy.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// The longest the log goes without a progress line during the copy.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the clone failed; recorded (clipped) in the progress file and logged at ERROR.
#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Copy(#[from] CopyError),
    #[error("the source's slice {} {problem}", path.display())]
    SourceSlice { path: PathBuf, problem: String },
    #[error(
        "the slice {} is itself the mount point of its volume; the copy needs it below one (/data/home-coder on /data)",
        .0.display()
    )]
    SliceIsVolume(PathBuf),
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the copy was finished in {} but neither it nor the slice {} exists any more",
        staging.display(), slice.display()
    )]
    StagingLost { staging: PathBuf, slice: PathBuf },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CloneError + 'a {
    move |source| CloneError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Runs the clone for `config`; the process's exit status: 0 when done (or nothing to do), 1
/// when it failed.
pub fn clone_slice(config: &Config) -> u8 {
    let Some(clone) = &config.clone_from else {
        event!(
            Level::Info,
            "clone",
            "no [clone_from] in the configuration: this Agent is not a clone, nothing to copy"
        );
        return 0;
    };
    let volume = wait_for_volume(&config.slice);
    let record_path = volume.join(record::FILE_NAME);
    let previous = match record::read(&record_path) {
        Ok(Some(r)) if r.report.source_agent == clone.source_agent => Some(r),
        Ok(_) => None,
        Err(e) => {
            event!(Level::Warn, "clone", "{e}; starting the clone over");
            None
        }
    };
    let mut job = Job {
        clone,
        slice: &config.slice,
        volume,
        record_path,
        record: previous.unwrap_or_else(|| Record::waiting(&clone.source_agent)),
        started: Instant::now(),
    };
    match job.record.report.state {
        CloneState::Done => {
            event!(
                Level::Info,
                "clone",
                "the slice {} already holds the copy of {}'s slice (see {}); nothing to do",
                config.slice.path.display(),
                clone.source_agent,
                job.record_path.display()
            );
            return 0;
        }
        CloneState::Failed => {
            // Logged again on every run, the record left as the failure wrote it.
            event!(
                Level::Error,
                "clone",
                id = ids::CLONE_FAILED,
                "clone of {}'s slice failed earlier and is not retried: {} (remove {} to try again)",
                clone.source_agent,
                job.record
                    .report
                    .error
                    .as_deref()
                    .unwrap_or("no reason recorded"),
                job.record_path.display()
            );
            return 1;
        }
        CloneState::Waiting | CloneState::Copying => {}
    }
    match job.run() {
        Ok(()) => 0,
        Err(error) => {
            job.failed(&error);
            1
        }
    }
}

/// Where the slice's volume is mounted, once it is; never the root file system.
fn wait_for_volume(slice: &Slice) -> PathBuf {
    let mut said = false;
    loop {
        match slice::volume_mount_point(slice) {
            Ok(volume) => return volume,
            Err(why) if !said => {
                said = true;
                event!(
                    Level::Warn,
                    "clone",
                    id = ids::SLICE_MISSING,
                    "{why}; waiting for it before copying anything (nothing is written meanwhile)"
                );
            }
            Err(_) => {}
        }
        std::thread::sleep(POLL);
    }
}

struct Job<'a> {
    clone: &'a CloneFrom,
    slice: &'a Slice,
    volume: PathBuf,
    record_path: PathBuf,
    record: Record,
    started: Instant,
}

impl Job<'_> {
    fn save(&self) {
        if let Err(e) = record::write(&self.record_path, &self.record) {
            event!(
                Level::Warn,
                "clone",
                "cannot write the clone's progress to {}: {e}",
                self.record_path.display()
            );
        }
    }

    fn run(&mut self) -> Result<(), CloneError> {
        let relative = self
            .slice
            .path
            .strip_prefix(&self.volume)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .ok_or_else(|| CloneError::SliceIsVolume(self.slice.path.clone()))?
            .to_owned();
        let staging = self.volume.join(STAGING);
        if self.record.staged {
            event!(
                Level::Info,
                "clone",
                "the copy of {}'s slice was finished before a restart; moving it into {}",
                self.clone.source_agent,
                self.slice.path.display()
            );
        } else {
            self.record.from = self.clone.source.to_string();
            self.record.started_at = Some(wall_now());
            self.record.report.state = CloneState::Waiting;
            self.save();
            let mounted = self.wait_for_source()?;
            let root = match (&mounted, &self.clone.source) {
                (Some(m), _) => m.root().to_owned(),
                (None, CloneSource::Directory(dir) | CloneSource::Device(dir)) => dir.clone(),
            };
            self.copy(&root.join(&relative), &staging)?;
            drop(mounted);
        }
        self.move_in(&staging)?;
        self.record.report.state = CloneState::Done;
        self.record.finished_at = Some(wall_now());
        self.record.staged = false;
        record::write(&self.record_path, &self.record)
            .map_err(io("write the clone's progress to", &self.record_path))?;
        event!(
            Level::Info,
            "clone",
            id = ids::CLONE_DONE,
            "clone done: {} files and {} bytes of {}'s slice copied into {} in {}s; the source volume is no longer used",
            self.record.report.files_done,
            self.record.report.bytes_done,
            self.clone.source_agent,
            self.slice.path.display(),
            self.started.elapsed().as_secs()
        );
        Ok(())
    }

    /// Waits for the source's device (then mounts it) or directory to appear.
    fn wait_for_source(&self) -> Result<Option<Mounted>, CloneError> {
        let path = match &self.clone.source {
            CloneSource::Device(path) | CloneSource::Directory(path) => path,
        };
        event!(
            Level::Info,
            "clone",
            id = ids::CLONE_STARTED,
            "cloning the slice of {} from {} into {}",
            self.clone.source_agent,
            self.clone.source,
            self.slice.path.display()
        );
        let mut said = false;
        while !path.exists() {
            if !std::mem::replace(&mut said, true) {
                event!(
                    Level::Info,
                    "clone",
                    "waiting for the source's {} to appear (control attaches the source volume after this VM has booted)",
                    self.clone.source
                );
            }
            std::thread::sleep(POLL);
        }
        match &self.clone.source {
            CloneSource::Device(device) => Ok(Some(source::mount_device(device, &self.volume)?)),
            CloneSource::Directory(_) => Ok(None),
        }
    }

    /// Counts, then copies the source's slice `from` into `staging`, anew, then syncs it.
    fn copy(&mut self, from: &Path, staging: &Path) -> Result<(), CloneError> {
        match std::fs::symlink_metadata(from) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CloneError::SourceSlice {
                    path: from.to_owned(),
                    problem: "is not a directory".to_owned(),
                });
            }
            Err(e) => {
                return Err(CloneError::SourceSlice {
                    path: from.to_owned(),
                    problem: format!("cannot be read: {e}"),
                });
            }
        }
        if std::fs::symlink_metadata(staging).is_ok() {
            event!(
                Level::Info,
                "clone",
                "removing {} left by an interrupted copy; copying again from the start",
                staging.display()
            );
            std::fs::remove_dir_all(staging).map_err(io("remove", staging))?;
        }
        let totals = copy::count(from)?;
        event!(
            Level::Info,
            "clone",
            "copying {} files and {} bytes from {} into {}",
            totals.files,
            totals.bytes,
            from.display(),
            staging.display()
        );
        self.record.report.state = CloneState::Copying;
        self.record.report.files_total = Some(totals.files);
        self.record.report.bytes_total = Some(totals.bytes);
        self.record.report.files_done = 0;
        self.record.report.bytes_done = 0;
        self.save();
        let done = self.copy_reporting(from, staging, totals)?;
        self.record.report.files_done = done.files;
        self.record.report.bytes_done = done.bytes;
        let volume = std::fs::File::open(&self.volume).map_err(io("open", &self.volume))?;
        nix::unistd::syncfs(&volume).map_err(|e| io("sync", &self.volume)(e.into()))?;
        self.record.staged = true;
        record::write(&self.record_path, &self.record)
            .map_err(io("write the clone's progress to", &self.record_path))
    }

    /// The copy itself, with the progress file rewritten at most every second and a log line
    /// every tenth of the way or every 30 s.
    fn copy_reporting(
        &mut self,
        from: &Path,
        staging: &Path,
        totals: Totals,
    ) -> Result<Totals, CloneError> {
        let mut written = Instant::now();
        let mut logged = Instant::now();
        let mut tenth = 0_u64;
        let mut tick = |done: Totals| {
            let now = Instant::now();
            // Tenths of the bytes, or of the files when there are no bytes to copy.
            let fraction = done
                .bytes
                .saturating_mul(10)
                .checked_div(totals.bytes)
                .unwrap_or_else(|| done.files.saturating_mul(10) / totals.files.max(1));
            if fraction > tenth || now.duration_since(logged) >= LOG_EVERY {
                tenth = tenth.max(fraction);
                logged = now;
                event!(
                    Level::Info,
                    "clone",
                    "copied {} of {} files, {} of {} bytes",
                    done.files,
                    totals.files,
                    done.bytes,
                    totals.bytes
                );
            }
            if now.duration_since(written) >= WRITE_EVERY {
                written = now;
                self.record.report.files_done = done.files;
                self.record.report.bytes_done = done.bytes;
                self.save();
            }
        };
        Ok(Copier::new(&mut tick).copy_tree(from, staging)?)
    }

    /// Moves the finished copy into the slice; what was in the slice is removed if empty, else
    /// kept beside it. Each step is checked against the tree, so a rerun after a crash between
    /// any two of them picks up where it stopped.
    fn move_in(&self, staging: &Path) -> Result<(), CloneError> {
        let slice = &self.slice.path;
        if std::fs::symlink_metadata(staging).is_err() {
            // Moved in before a crash: nothing left to do but say so.
            return if std::fs::symlink_metadata(slice).is_ok() {
                Ok(())
            } else {
                Err(CloneError::StagingLost {
                    staging: staging.to_owned(),
                    slice: slice.clone(),
                })
            };
        }
        if std::fs::symlink_metadata(slice).is_ok() {
            set_aside(slice)?;
        }
        std::fs::rename(staging, slice).map_err(io("move the copy into", slice))?;
        let parent = slice.parent().unwrap_or(&self.volume);
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io("sync", parent))
    }

    /// Records and logs the failure.
    fn failed(&mut self, error: &CloneError) {
        let message = record::clip(&error.to_string());
        event!(
            Level::Error,
            "clone",
            id = ids::CLONE_FAILED,
            "clone of {}'s slice failed: {message}",
            self.clone.source_agent
        );
        self.record.report.state = CloneState::Failed;
        self.record.report.error = Some(message);
        self.record.finished_at = Some(wall_now());
        self.save();
    }
}

/// Removes the slice if it is empty (it is, on a fresh clone), else renames it
/// `<slice>.before-clone` (or `.before-clone.N`) beside it.
fn set_aside(slice: &Path) -> Result<(), CloneError> {
    match std::fs::remove_dir(slice) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOTEMPTY as i32) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EEXIST as i32) => {}
        Err(e) => return Err(io("remove the empty slice", slice)(e)),
    }
    let name = slice.file_name().unwrap_or_default().to_string_lossy();
    let kept = (0..1_000)
        .map(|n| {
            slice.with_file_name(if n == 0 {
                format!("{name}.before-clone")
            } else {
                format!("{name}.before-clone.{n}")
            })
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| slice.with_file_name(format!("{name}.before-clone")));
    std::fs::rename(slice, &kept).map_err(io("set aside", slice))?;
    event!(
        Level::Info,
        "clone",
        "{} was not empty when the copy was moved in (something wrote there during the copy); its contents are kept in {}",
        slice.display(),
        kept.display()
    );
    Ok(())
}
