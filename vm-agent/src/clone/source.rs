//! The source's volume: its device mounted read-only on a private directory for the copy (and
//! unmounted after it), or a directory where someone else mounted it.
//!
//! It never mounts this VM's own slice volume as the source: after a reboot during a clone
//! both volumes carry the same file system label, so the device is compared with the slice's
//! by device number, not by name.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::Level;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::event;

/// Where the source's device is mounted: the unit's `RuntimeDirectory`.
pub const MOUNT_POINT: &str = "/run/vm-agent-clone/source";

/// How often a device that is not mountable yet is tried, and how many times.
const MOUNT_TRIES: u32 = 5;
const MOUNT_RETRY: Duration = Duration::from_secs(2);

/// Why the source cannot be used; the copy fails with it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the source device {} is not a block device", .0.display())]
    NotABlockDevice(PathBuf),
    #[error(
        "the source device {} is this VM's own slice volume (mounted at {}); refusing to copy a volume onto itself",
        device.display(), volume.display()
    )]
    OwnVolume { device: PathBuf, volume: PathBuf },
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The source device mounted read-only; unmounted when dropped.
#[derive(Debug)]
pub struct Mounted {
    point: PathBuf,
}

impl Mounted {
    pub fn root(&self) -> &Path {
        &self.point
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match umount2(&self.point, MntFlags::empty()) {
            Ok(()) => event!(
                Level::Info,
                "clone",
                "unmounted the source volume from {}",
                self.point.display()
            ),
            Err(e) => {
                // Busy: detach it, so it goes away once nothing uses it.
                let detached = umount2(&self.point, MntFlags::MNT_DETACH);
                event!(
                    Level::Warn,
                    "clone",
                    "cannot unmount the source volume from {}: {e}; detached it instead ({})",
                    self.point.display(),
                    detached
                        .map_or_else(|e| format!("which failed too: {e}"), |()| "ok".to_owned())
                );
            }
        }
    }
}

/// Mounts `device` read-only (ext4, no setuid, no devices, no exec) on [`MOUNT_POINT`],
/// unless it is the device of this VM's own slice volume mounted at `volume`.
pub fn mount_device(device: &Path, volume: &Path) -> Result<Mounted, SourceError> {
    let meta = std::fs::metadata(device).map_err(io("stat the source device", device))?;
    if !meta.file_type().is_block_device() {
        return Err(SourceError::NotABlockDevice(device.to_owned()));
    }
    let own = std::fs::metadata(volume).map_err(io("stat the slice's volume", volume))?;
    if meta.rdev() == own.dev() {
        return Err(SourceError::OwnVolume {
            device: device.to_owned(),
            volume: volume.to_owned(),
        });
    }
    let point = PathBuf::from(MOUNT_POINT);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&point)
        .map_err(io("create the mount point", &point))?;
    // A run killed while it had the source mounted left it there: take it away first.
    let _ = umount2(&point, MntFlags::MNT_DETACH);
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut tries = 0;
    loop {
        tries += 1;
        match mount(Some(device), &point, Some("ext4"), flags, None::<&str>) {
            Ok(()) => {
                event!(
                    Level::Info,
                    "clone",
                    "mounted the source volume {} read-only on {}",
                    device.display(),
                    point.display()
                );
                return Ok(Mounted { point });
            }
            Err(e) if tries < MOUNT_TRIES => {
                event!(
                    Level::Warn,
                    "clone",
                    "cannot mount the source volume {} yet ({e}); trying again in {}s",
                    device.display(),
                    MOUNT_RETRY.as_secs()
                );
                std::thread::sleep(MOUNT_RETRY);
            }
            Err(e) => {
                return Err(SourceError::Io {
                    what: "mount (read-only, ext4) the source volume",
                    path: device.to_owned(),
                    source: e.into(),
                });
            }
        }
    }
}
