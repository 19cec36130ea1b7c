//! Guards the persistent slice `/data/home-coder`.
//!
//! The slice must be a mount point (read from the mount table, not guessed from the
//! directory), writable (proved by creating and removing a probe file), and owned by the
//! workspace user. When it is missing or read-only the agent never creates a stand-in on the
//! root disk: the workspace would write to the wrong disk and lose the data at the next
//! rebuild. It logs at ERROR, reports it in heartbeats, keeps checking, and says so when the
//! slice is back. It reads no customer file: only the mount table, the directory's owner, the
//! file system's counters and its own probe file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control_api::Timestamp;
use control_api::agent::{SliceReport, SliceState};
use log::Level;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval};

use crate::clock::wall_now;
use crate::config::Slice;
use crate::event;
use crate::logging::ids;
use crate::progress::Progress;

/// How long one check may take. It only reads the mount table and metadata and writes a probe
/// file, but on a struggling disk that can take a while, and a slow disk is reported, not a
/// reason for the watchdog to restart the agent (and with it the tunnel).
const CHECK_BOUND: Duration = Duration::from_mins(1);

/// The slice as last checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceStatus {
    pub path: PathBuf,
    pub report: SliceReport,
    pub detail: String,
    pub checked_at: Timestamp,
}

/// One mount from the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub read_only: bool,
    pub fs_type: String,
}

/// Parses `/proc/self/mountinfo` (proc(5)): field 5 is the mount point (octal-escaped), field
/// 6 the per-mount options, and after the ` - ` separator come the type and super options.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mount_point = unescape(fields.get(4)?);
            let mut after = after.split(' ');
            let fs_type = after.next()?.to_owned();
            let super_options = after.nth(1).unwrap_or_default();
            let read_only = fields.get(5)?.split(',').any(|o| o == "ro")
                || super_options.split(',').any(|o| o == "ro");
            Some(Mount {
                mount_point: PathBuf::from(mount_point),
                read_only,
                fs_type,
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the slice once.
pub fn check(config: &Slice) -> SliceStatus {
    let (state, detail, counters) = inspect(config);
    SliceStatus {
        path: config.path.clone(),
        report: SliceReport {
            state,
            free_bytes: counters.map(|c| c.free_bytes),
            total_bytes: counters.map(|c| c.total_bytes),
            free_inodes: counters.map(|c| c.free_inodes),
            total_inodes: counters.map(|c| c.total_inodes),
        },
        detail,
        checked_at: wall_now(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Counters {
    free_bytes: u64,
    total_bytes: u64,
    free_inodes: u64,
    total_inodes: u64,
}

// fsblkcnt_t and fsfilcnt_t are not u64 on every platform.
#[allow(clippy::useless_conversion)]
fn counters(path: &Path) -> Option<Counters> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    let fragment = u64::from(stats.fragment_size());
    Some(Counters {
        free_bytes: u64::from(stats.blocks_available()).saturating_mul(fragment),
        total_bytes: u64::from(stats.blocks()).saturating_mul(fragment),
        free_inodes: u64::from(stats.files_available()),
        total_inodes: u64::from(stats.files()),
    })
}

/// The mount the slice lives on: the volume mounted at it or at one of its parents (the image
/// mounts the volume at `/data`), never the root file system. Among the mounts that hold the
/// path the deepest one is where it lives; for one mount point, the last entry is on top.
fn volume<'a>(table: &'a [Mount], path: &Path) -> Result<&'a Mount, String> {
    let mount = holder(table, path)?;
    if !path.exists() {
        return Err(format!(
            "{} does not exist on the volume mounted at {}",
            path.display(),
            mount.mount_point.display()
        ));
    }
    Ok(mount)
}

/// The deepest mount holding `path`, unless that is the root file system.
fn holder<'a>(table: &'a [Mount], path: &Path) -> Result<&'a Mount, String> {
    table
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.components().count(), *i))
        .map(|(_, m)| m)
        .filter(|m| m.mount_point != Path::new("/"))
        .ok_or_else(|| {
            format!(
                "{} is not on a mounted volume: the persistent volume is not mounted",
                path.display()
            )
        })
}

/// Where the slice's volume is mounted (`/data` for `/data/home-coder`), read from the
/// configured mount table; an error saying why when it is not mounted. Unlike [`check`] it
/// does not need the slice directory itself to exist.
pub fn volume_mount_point(config: &Slice) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(&config.mountinfo).map_err(|e| {
        format!(
            "cannot read the mount table {}: {e}",
            config.mountinfo.display()
        )
    })?;
    holder(&parse_mountinfo(&text), &config.path).map(|m| m.mount_point.clone())
}

fn inspect(config: &Slice) -> (SliceState, String, Option<Counters>) {
    let path = &config.path;
    let table = match std::fs::read_to_string(&config.mountinfo) {
        Ok(text) => parse_mountinfo(&text),
        Err(e) => {
            return (
                SliceState::Missing,
                format!(
                    "cannot read the mount table {}: {e}",
                    config.mountinfo.display()
                ),
                None,
            );
        }
    };
    let mount = match volume(&table, path) {
        Ok(mount) => mount,
        Err(detail) => return (SliceState::Missing, detail, None),
    };
    let counters = counters(path);
    if mount.read_only {
        return (
            SliceState::ReadOnly,
            format!("{} is mounted read-only", path.display()),
            counters,
        );
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.uid() != config.owner_uid => {
            return (
                SliceState::WrongOwner,
                format!(
                    "{} is owned by uid {}, not {} ({})",
                    path.display(),
                    meta.uid(),
                    config.owner,
                    config.owner_uid
                ),
                counters,
            );
        }
        Ok(_) => {}
        Err(e) => {
            return (
                SliceState::Missing,
                format!("cannot stat {}: {e}", path.display()),
                None,
            );
        }
    }
    if let Err(e) = probe(path) {
        return (
            SliceState::ReadOnly,
            format!("{} is not writable: {e}", path.display()),
            counters,
        );
    }
    if let Some(c) = counters {
        let used = c.total_bytes.saturating_sub(c.free_bytes);
        let full = c.total_bytes > 0
            && used.saturating_mul(100)
                >= c.total_bytes
                    .saturating_mul(u64::from(config.nearly_full_percent));
        let inodes_full = c.total_inodes > 0
            && c.total_inodes
                .saturating_sub(c.free_inodes)
                .saturating_mul(100)
                >= c.total_inodes
                    .saturating_mul(u64::from(config.nearly_full_percent));
        if full || inodes_full {
            return (
                SliceState::NearlyFull,
                format!(
                    "{} is nearly full: {} of {} bytes, {} of {} inodes free",
                    path.display(),
                    c.free_bytes,
                    c.total_bytes,
                    c.free_inodes,
                    c.total_inodes
                ),
                counters,
            );
        }
    }
    (
        SliceState::Mounted,
        format!("{} is mounted and writable", path.display()),
        counters,
    )
}

/// The name of a probe file in the slice, before the agent's PID.
pub const PROBE_PREFIX: &str = ".vm-agent-probe-";

/// Whether `name`, in the slice's top directory, is a probe file of this agent's (one a VM
/// shut down mid-probe leaves behind): never the workspace's own.
pub fn is_probe(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(PROBE_PREFIX))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates, writes and removes a probe file in the slice (and nothing else), after removing
/// any an earlier agent process left there (its VM lost power mid-probe).
fn probe(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let own = format!("{PROBE_PREFIX}{}", std::process::id());
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name != own.as_str()
                && is_probe(&name)
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let probe = path.join(own);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let written = file.write_all(b"probe").and_then(|()| file.sync_all());
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// Checks the slice every `check_interval`, publishing each result and logging changes.
pub fn spawn(
    config: Slice,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<SliceStatus>, JoinHandle<()>) {
    let first = check(&config);
    log_change(None, &first);
    let (status, receiver) = watch::channel(first);
    let task = tokio::spawn(async move {
        let mut ticks = interval(config.check_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            progress.next_within(config.check_interval);
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            progress.next_within(CHECK_BOUND);
            let config = config.clone();
            let Ok(next) = tokio::task::spawn_blocking(move || check(&config)).await else {
                continue;
            };
            log_change(Some(&status.borrow()), &next);
            status.send_replace(next);
        }
    });
    (receiver, task)
}

fn healthy(state: SliceState) -> bool {
    matches!(state, SliceState::Mounted | SliceState::NearlyFull)
}

fn log_change(before: Option<&SliceStatus>, now: &SliceStatus) {
    let previous = before.map(|b| b.report.state);
    if previous == Some(now.report.state) {
        return;
    }
    match now.report.state {
        SliceState::Missing | SliceState::ReadOnly | SliceState::WrongOwner => {
            event!(
                Level::Error,
                "slice",
                id = ids::SLICE_MISSING,
                "{}; nothing will be written in its place",
                now.detail
            );
        }
        SliceState::NearlyFull => event!(Level::Warn, "slice", "{}", now.detail),
        SliceState::Mounted if previous.is_some_and(|p| !healthy(p)) => {
            event!(
                Level::Info,
                "slice",
                id = ids::SLICE_BACK,
                "{} again",
                now.detail
            );
        }
        SliceState::Mounted => event!(Level::Info, "slice", "{}", now.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_removes_the_ones_earlier_agents_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".vm-agent-probe-1", ".vm-agent-probe-x", "notes"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        probe(dir.path()).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".vm-agent-probe-x", "notes"]);
    }

    const TABLE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
61 22 0:52 / /data/home-coder rw,nosuid,nodev shared:30 - ext4 /dev/sdb rw
62 22 0:53 / /mnt/with\\040space ro,relatime - tmpfs tmpfs rw
63 22 0:54 / /srv/remounted rw,relatime - xfs /dev/sdc ro
";

    #[test]
    fn the_mount_table_is_read_as_the_kernel_writes_it() {
        let mounts = parse_mountinfo(TABLE);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/data/home-coder"));
        assert!(!mounts[1].read_only);
        assert_eq!(mounts[1].fs_type, "ext4");
        assert_eq!(mounts[2].mount_point, PathBuf::from("/mnt/with space"));
        assert!(mounts[2].read_only, "per-mount ro");
        assert!(mounts[3].read_only, "super block ro");
        assert!(parse_mountinfo("garbage line\n").is_empty());
    }

    /// The image mounts the Agent's volume at `/data`: the slice below it is on that volume;
    /// with the volume gone it is on the root file system, which is never the slice.
    #[test]
    fn the_slice_may_live_below_the_volumes_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let slice = data.join("home-coder");
        std::fs::create_dir_all(&slice).unwrap();
        let mountinfo = dir.path().join("mountinfo");
        let config = Slice {
            path: slice.clone(),
            owner: "me".to_owned(),
            owner_uid: nix::unistd::getuid().as_raw(),
            mountinfo: mountinfo.clone(),
            check_interval: Duration::from_secs(30),
            // The temporary directory is on the host's disk, whose fill is not this test's
            // business (CI's disk was 98% full once): only a completely full one is nearly full.
            nearly_full_percent: 100,
        };
        let root = "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n";
        let volume = format!(
            "61 22 0:52 / {} rw,nosuid,nodev shared:30 - ext4 /dev/sdb rw\n",
            data.display()
        );
        std::fs::write(&mountinfo, format!("{root}{volume}")).unwrap();
        let (state, detail, _) = inspect(&config);
        assert_eq!(state, SliceState::Mounted, "{detail}");

        std::fs::write(&mountinfo, root).unwrap();
        let (state, detail, _) = inspect(&config);
        assert_eq!(state, SliceState::Missing);
        assert!(detail.contains("not on a mounted volume"), "{detail}");

        // The volume is there but the workspace directory is not (yet): missing, not made.
        std::fs::remove_dir(&slice).unwrap();
        std::fs::write(&mountinfo, format!("{root}{volume}")).unwrap();
        let (state, detail, _) = inspect(&config);
        assert_eq!(state, SliceState::Missing);
        assert!(detail.contains("does not exist on the volume"), "{detail}");
        assert!(!slice.exists());
    }
}
