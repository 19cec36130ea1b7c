//! `vm-agent clone-slice`, run as the real binary: the copy keeps everything a workspace's
//! files carry, from a directory or a real ext4 device, survives a SIGKILL, refuses bad
//! inputs without touching the slice, and `vm-agent run` reports it in heartbeats.
//!
//! The copy keeps owners and device nodes and mounts a file system: these tests need root and
//! are skipped (failed under `CONTROL_TEST_STRICT=1`) without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Rig, eventually};
use control_api::agent_config::{AgentToml, CloneFromToml};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};
use serde_json::Value;
use test_support::{Daemon, have_program, skip, workspace_bin};

const SOURCE: &str = "agt_01JDQ6SOURCE0000000000000";

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        skip("not root: the clone-slice tests (owners, device nodes, mounts) did not run");
    }
    root
}

/// A VM whose slice volume is mounted at `<dir>/data` (per its mount table) with an empty
/// `<dir>/data/home-coder`, as the image leaves a fresh clone.
struct CloneRig {
    rig: Rig,
}

impl CloneRig {
    fn new() -> Self {
        let rig = Rig::new();
        let this = Self { rig };
        this.mount_volume(true);
        this
    }

    fn volume(&self) -> PathBuf {
        self.rig.path("data")
    }

    fn slice(&self) -> PathBuf {
        self.rig.slice()
    }

    fn mount_volume(&self, mounted: bool) {
        let mut table = String::from("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n");
        if mounted {
            let _ = writeln!(
                table,
                "61 22 0:52 / {} rw,relatime shared:30 - ext4 /dev/sdb rw",
                self.volume().display()
            );
        }
        std::fs::write(self.rig.path("mountinfo"), table).unwrap();
    }

    /// The rig's configuration with `clone_from` set.
    fn config(&self, clone_from: Option<CloneFromToml>) -> PathBuf {
        let path = self.rig.config();
        let mut file: AgentToml = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file.clone_from = clone_from;
        std::fs::write(&path, file.to_toml().unwrap()).unwrap();
        path
    }

    fn directory_config(&self, directory: &Path) -> PathBuf {
        self.config(Some(CloneFromToml {
            source_agent: SOURCE.to_owned(),
            device: None,
            directory: Some(directory.to_owned()),
        }))
    }

    fn command(config: &Path) -> Command {
        let mut command = Command::new(workspace_bin("vm-agent"));
        command.args(["clone-slice", "--config"]).arg(config);
        command
    }

    fn run(config: &Path) -> Output {
        Self::command(config).output().unwrap()
    }

    fn record(&self) -> Value {
        std::fs::read(self.volume().join(".vm-agent-clone.json"))
            .map_or(Value::Null, |text| serde_json::from_slice(&text).unwrap())
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mtime(path: &Path, seconds: i64, nanos: i64) {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(seconds - 3_600, 0),
        &TimeSpec::new(seconds, nanos),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A workspace with every kind of thing the copy must keep.
fn make_tree(root: &Path) {
    let p = |rel: &str| root.join(rel);
    std::fs::create_dir_all(root).unwrap();
    for dir in ["shared", "bin", "links", "hard", "empty", "deep/er/still"] {
        std::fs::create_dir_all(p(dir)).unwrap();
    }
    std::fs::write(p("shared/notes.txt"), "the team's notes\n").unwrap();
    std::fs::write(p("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    let big: Vec<u8> = (0..3_000_000_u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(p("deep/er/still/big.bin"), &big).unwrap();
    std::fs::write(p("hard/a"), "pair").unwrap();
    std::fs::hard_link(p("hard/a"), p("hard/b")).unwrap();
    std::fs::write(p("hard/t1"), "triple").unwrap();
    std::fs::hard_link(p("hard/t1"), p("shared/t2")).unwrap();
    std::fs::hard_link(p("hard/t1"), p("deep/t3")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", p("links/dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", p("links/absolute")).unwrap();
    mkfifo(&p("pipe"), Mode::from_bits_truncate(0o620)).unwrap();
    // A device node, where this machine lets us make one.
    let _ = mknod(
        &p("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    );
    // A socket: skipped by the copy.
    drop(std::os::unix::net::UnixListener::bind(p("agent.sock")).unwrap());

    rustix::fs::lsetxattr(
        p("shared/notes.txt"),
        "user.origin",
        b"laptop",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        p("shared"),
        "user.project",
        b"alpha",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();

    for (rel, uid, gid) in [
        ("", 1000, 1000),
        ("shared", 1234, 2345),
        ("shared/notes.txt", 1234, 2345),
        ("bin/tool", 1234, 1234),
        ("links/dangling", 1234, 2345),
        ("hard/a", 1000, 1000),
        ("pipe", 1000, 2345),
    ] {
        chown(&p(rel), uid, gid);
    }
    chmod(&p(""), 0o750);
    chmod(&p("shared"), 0o2775);
    chmod(&p("shared/notes.txt"), 0o640);
    chmod(&p("bin/tool"), 0o4755);
    chmod(&p("empty"), 0o1777);
    for (i, rel) in ["shared/notes.txt", "bin/tool", "hard/a", "links/dangling"]
        .iter()
        .enumerate()
    {
        set_mtime(
            &p(rel),
            1_600_000_000 + i64::try_from(i).unwrap(),
            123_456_789,
        );
    }
    // Directories last: their contents changed their times.
    for (i, rel) in ["deep/er/still", "deep/er", "deep", "shared", "empty", ""]
        .iter()
        .enumerate()
    {
        set_mtime(
            &p(rel),
            1_500_000_000 + i64::try_from(i).unwrap(),
            987_654_321,
        );
    }
}

/// One entry of a tree as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    content: Option<u64>,
    target: Option<PathBuf>,
    rdev: Option<u64>,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: (i64, i64),
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    entries: BTreeMap<PathBuf, Entry>,
    /// Names that share an inode, as groups of two or more.
    links: BTreeSet<Vec<PathBuf>>,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut list = vec![0_u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut list[..]).unwrap_or(0);
    list[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut value = vec![0_u8; 4096];
            let len = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(len);
            (String::from_utf8_lossy(name).into_owned(), value)
        })
        .collect()
}

fn snapshot(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_owned();
        let kind = meta.file_type();
        let name = if kind.is_dir() {
            for child in std::fs::read_dir(&path).unwrap() {
                pending.push(child.unwrap().path());
            }
            "dir"
        } else if kind.is_file() {
            "file"
        } else if kind.is_symlink() {
            "symlink"
        } else if kind.is_fifo() {
            "fifo"
        } else if kind.is_char_device() {
            "char"
        } else if kind.is_socket() {
            "socket"
        } else {
            "other"
        };
        if !kind.is_dir() && meta.nlink() > 1 {
            inodes.entry(meta.ino()).or_default().push(rel.clone());
        }
        entries.insert(
            rel,
            Entry {
                kind: name,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: kind.is_file().then_some(meta.len()),
                content: kind.is_file().then(|| {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    std::fs::read(&path).unwrap().hash(&mut hasher);
                    hasher.finish()
                }),
                target: kind
                    .is_symlink()
                    .then(|| std::fs::read_link(&path).unwrap()),
                rdev: kind.is_char_device().then(|| meta.rdev()),
                xattrs: xattrs(&path),
                mtime: (meta.mtime(), meta.mtime_nsec()),
            },
        );
    }
    let links = inodes
        .into_values()
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    Snapshot { entries, links }
}

/// The source as the copy should be: without its sockets.
fn without_sockets(mut snapshot: Snapshot) -> Snapshot {
    snapshot.entries.retain(|_, e| e.kind != "socket");
    snapshot
}

#[test]
fn a_slice_is_copied_with_owners_modes_links_xattrs_and_times_once() {
    if !is_root() {
        return;
    }
    let rig = CloneRig::new();
    let source_root = rig.rig.path("source-volume");
    make_tree(&source_root.join("home-coder"));
    let before = snapshot(&source_root);
    let config = rig.directory_config(&source_root);

    let output = CloneRig::run(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(
        log.contains("copying") && log.contains("clone done"),
        "{log}"
    );
    assert!(log.contains("skipped the socket"), "{log}");

    assert_eq!(snapshot(&source_root), before, "the source is unchanged");
    let copied = snapshot(&rig.slice());
    let expected = without_sockets(snapshot(&source_root.join("home-coder")));
    assert_eq!(copied, expected);
    assert_eq!(copied.links.len(), 2, "{:?}", copied.links);

    let record = rig.record();
    assert_eq!(record["state"], "done", "{record}");
    assert_eq!(record["source_agent"], SOURCE);
    let files = u64::try_from(expected.entries.len() - 1).unwrap();
    assert_eq!(record["files_total"], files, "{record}");
    assert_eq!(record["files_done"], files, "{record}");
    assert_eq!(record["bytes_total"], record["bytes_done"]);
    assert_eq!(record["bytes_total"], 3_000_000 + 17 + 20 + 4 + 6);
    assert!(record["finished_at"].is_string(), "{record}");
    assert!(!rig.volume().join(".vm-agent-clone-staging").exists());

    // Again (every boot): done at once, nothing changed.
    let record_before = std::fs::read(rig.volume().join(".vm-agent-clone.json")).unwrap();
    let output = CloneRig::run(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("nothing to do"),
        "{}",
        stderr(&output)
    );
    assert_eq!(snapshot(&rig.slice()), copied);
    assert_eq!(
        std::fs::read(rig.volume().join(".vm-agent-clone.json")).unwrap(),
        record_before
    );
}

/// A loop device holding an ext4 image, detached when dropped (only the one it got).
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_slice_is_copied_from_the_source_volumes_device() {
    if !is_root() || !have_program("mke2fs") || !have_program("losetup") {
        return;
    }
    let rig = CloneRig::new();
    let tree = rig.rig.path("tree");
    make_tree(&tree.join("home-coder"));
    std::fs::remove_file(tree.join("home-coder/agent.sock")).unwrap();
    let image = rig.rig.path("source.img");
    let made = Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-d"])
        .arg(&tree)
        .args(["-L", "agent-slice"])
        .arg(&image)
        .arg("64M")
        .output()
        .unwrap();
    assert!(made.status.success(), "mke2fs: {}", stderr(&made));
    let attached = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&image)
        .output()
        .unwrap();
    if !attached.status.success() {
        skip(&format!(
            "no loop device ({}): the device clone test did not run",
            stderr(&attached).trim()
        ));
        return;
    }
    let device = Loop(
        String::from_utf8(attached.stdout)
            .unwrap()
            .trim()
            .to_owned(),
    );
    let config = rig.config(Some(CloneFromToml {
        source_agent: SOURCE.to_owned(),
        device: Some(PathBuf::from(&device.0)),
        directory: None,
    }));
    let output = CloneRig::run(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("unmounted the source volume"),
        "{}",
        stderr(&output)
    );
    assert_eq!(rig.record()["state"], "done");
    // mke2fs -d keeps whole seconds of the times only: the copy has what the volume has.
    let mut expected = snapshot(&tree.join("home-coder"));
    for entry in expected.entries.values_mut() {
        entry.mtime.1 = 0;
    }
    assert_eq!(snapshot(&rig.slice()), expected);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains("/run/vm-agent-clone/source"),
        "the source is unmounted"
    );
    drop(device);
}

#[test]
fn a_copy_killed_midway_is_made_again_by_the_next_run() {
    if !is_root() {
        return;
    }
    let rig = CloneRig::new();
    let source_root = rig.rig.path("source-volume");
    let slice = source_root.join("home-coder");
    let chunk = vec![7_u8; 16 * 1024];
    for d in 0..30 {
        let dir = slice.join(format!("dir{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let mut file = std::fs::File::create(dir.join(format!("f{f:03}"))).unwrap();
            file.write_all(&chunk).unwrap();
            file.write_all(format!("{d}/{f}").as_bytes()).unwrap();
        }
    }
    let config = rig.directory_config(&source_root);
    let copy = Daemon::spawn(CloneRig::command(&config), 0);
    eventually(&copy, "the copy under way", Duration::from_secs(30), || {
        rig.record()["state"] == "copying"
    });
    copy.signal("-KILL");
    let (status, _) = copy.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert_eq!(
        rig.record()["state"],
        "copying",
        "killed before it was done"
    );

    let output = CloneRig::run(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(rig.record()["state"], "done");
    assert_eq!(snapshot(&rig.slice()), snapshot(&slice));
    assert!(!rig.volume().join(".vm-agent-clone-staging").exists());
    assert!(!rig.volume().join("home-coder.before-clone").exists());
}

#[test]
fn a_source_without_a_slice_fails_naming_the_path_and_leaves_the_slice_alone() {
    if !is_root() {
        return;
    }
    let rig = CloneRig::new();
    let source_root = rig.rig.path("source-volume");
    std::fs::create_dir_all(source_root.join("lost+found")).unwrap();
    std::fs::write(rig.slice().join("keep"), "mine").unwrap();
    let config = rig.directory_config(&source_root);
    let output = CloneRig::run(&config);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let record = rig.record();
    assert_eq!(record["state"], "failed", "{record}");
    let missing = source_root.join("home-coder").display().to_string();
    assert!(
        record["error"].as_str().unwrap().contains(&missing),
        "{record}"
    );
    assert!(stderr(&output).contains("ERROR") && stderr(&output).contains(&missing));
    assert_eq!(
        std::fs::read_to_string(rig.slice().join("keep")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(rig.slice()).unwrap().count(), 1);
    // A failure is final: the next run says so again and changes nothing.
    let output = CloneRig::run(&config);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not retried"),
        "{}",
        stderr(&output)
    );
    assert_eq!(rig.record(), record);
}

#[test]
fn without_its_volume_mounted_the_clone_waits_and_writes_nothing() {
    if !is_root() {
        return;
    }
    let rig = CloneRig::new();
    rig.mount_volume(false);
    let source_root = rig.rig.path("source-volume");
    make_tree(&source_root.join("home-coder"));
    let config = rig.directory_config(&source_root);
    let waiting = Daemon::spawn(CloneRig::command(&config), 0);
    eventually(&waiting, "the wait said", Duration::from_secs(20), || {
        waiting.log().contains("waiting for it")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(waiting.is_running());
    waiting.signal("-KILL");
    let (_, log) = waiting.wait_exit(Duration::from_secs(10));
    assert!(log.contains("not mounted"), "{log}");
    let written: Vec<_> = std::fs::read_dir(rig.volume())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written, ["home-coder"], "nothing beside the slice");
    assert_eq!(std::fs::read_dir(rig.slice()).unwrap().count(), 0);
}

#[test]
fn clone_from_needs_exactly_one_absolute_source() {
    let rig = CloneRig::new();
    let check = |clone_from: CloneFromToml| {
        let config = rig.config(Some(clone_from));
        Command::new(workspace_bin("vm-agent"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let both = check(CloneFromToml {
        source_agent: SOURCE.to_owned(),
        device: Some(PathBuf::from("/dev/disk/by-id/scsi-0HC_Volume_1")),
        directory: Some(PathBuf::from("/mnt/source")),
    });
    assert_eq!(both.status.code(), Some(2));
    assert!(
        stderr(&both).contains("`clone_from` sets both `device` and `directory`"),
        "{}",
        stderr(&both)
    );
    let relative = check(CloneFromToml {
        source_agent: SOURCE.to_owned(),
        device: None,
        directory: Some(PathBuf::from("mnt/source")),
    });
    assert!(
        stderr(&relative).contains("`clone_from.directory` must be an absolute path"),
        "{}",
        stderr(&relative)
    );
    let nameless = check(CloneFromToml {
        source_agent: " ".to_owned(),
        device: Some(PathBuf::from("/dev/vdb")),
        directory: None,
    });
    assert!(
        stderr(&nameless).contains("`clone_from.source_agent`"),
        "{}",
        stderr(&nameless)
    );
    let good = check(CloneFromToml {
        source_agent: SOURCE.to_owned(),
        device: Some(PathBuf::from("/dev/disk/by-id/scsi-0HC_Volume_1")),
        directory: None,
    });
    assert!(good.status.success(), "{}", stderr(&good));
    assert!(String::from_utf8_lossy(&good.stdout).contains(&format!(
        "clone of {SOURCE} from device /dev/disk/by-id/scsi-0HC_Volume_1"
    )));

    // Not a clone: nothing to do.
    let output = CloneRig::run(&rig.config(None));
    assert!(output.status.success());
    assert!(
        stderr(&output).contains("nothing to copy"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn heartbeats_report_the_clone_from_its_progress_file() {
    let mut rig = CloneRig::new();
    rig.rig.start_control();
    let config = rig.directory_config(&rig.rig.path("source-volume"));
    let agent = rig.rig.start_agent(&config, &[]);
    eventually(
        &agent,
        "a heartbeat saying waiting",
        Duration::from_secs(20),
        || {
            rig.rig
                .heartbeats()
                .iter()
                .any(|h| h["clone"]["state"] == "waiting" && h["clone"]["files_done"] == 0)
        },
    );
    let progress = serde_json::json!({
        "source_agent": SOURCE, "state": "copying", "files_done": 12, "files_total": 40,
        "bytes_done": 4096, "bytes_total": 65536, "from": "directory /x", "staged": false,
    });
    std::fs::write(
        rig.volume().join(".vm-agent-clone.json"),
        progress.to_string(),
    )
    .unwrap();
    eventually(
        &agent,
        "a heartbeat with the figures",
        Duration::from_secs(20),
        || {
            rig.rig.heartbeats().iter().any(|h| {
                h["clone"]
                    == serde_json::json!({
                        "source_agent": SOURCE, "state": "copying", "files_done": 12,
                        "files_total": 40, "bytes_done": 4096, "bytes_total": 65536,
                    })
            })
        },
    );
    std::fs::write(rig.volume().join(".vm-agent-clone.json"), "{ torn").unwrap();
    eventually(&agent, "waiting again", Duration::from_secs(20), || {
        rig.rig
            .heartbeats()
            .last()
            .is_some_and(|h| h["clone"]["state"] == "waiting")
    });
    let (_, log) = agent.stop();
    assert_eq!(
        log.matches("is not a clone progress record").count(),
        1,
        "{log}"
    );

    // Without [clone_from]: no clone key at all.
    let config = rig.config(None);
    let before = rig.rig.heartbeats().len();
    let agent = rig.rig.start_agent(&config, &[]);
    eventually(&agent, "heartbeats", Duration::from_secs(20), || {
        rig.rig.heartbeats().len() > before
    });
    agent.stop();
    assert!(
        rig.rig.heartbeats()[before..]
            .iter()
            .all(|h| h.get("clone").is_none())
    );
}

#[test]
fn the_clone_unit_file_passes_systemd_analyze_verify() {
    common::verify_unit(
        "vm-agent-clone.service",
        &[
            "clone-slice --config /etc/vm-agent/agent.toml",
            "Restart=on-abnormal",
            "PrivateDevices=no",
            "ProtectSystem=strict",
            "ReadWritePaths=-/data",
            "RuntimeDirectory=vm-agent-clone",
            "NoNewPrivileges=yes",
            "CAP_SYS_ADMIN",
        ],
    );
}

/// Killed after the copy was finished and synced but before it was moved in: the next run only
/// moves it in, and what had been written into the slice meanwhile is kept beside it.
#[test]
fn a_finished_copy_is_moved_in_after_a_crash_and_a_written_slice_is_kept() {
    if !is_root() {
        return;
    }
    let rig = CloneRig::new();
    let staging = rig.volume().join(".vm-agent-clone-staging");
    std::fs::create_dir_all(staging.join("project")).unwrap();
    std::fs::write(staging.join("project/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(rig.slice().join("early.txt"), "written during the copy").unwrap();
    let record = serde_json::json!({
        "source_agent": SOURCE, "state": "copying", "files_done": 2, "files_total": 2,
        "bytes_done": 13, "bytes_total": 13, "from": "directory /gone", "staged": true,
    });
    std::fs::write(
        rig.volume().join(".vm-agent-clone.json"),
        record.to_string(),
    )
    .unwrap();
    // The source is gone by now: a staged copy does not need it.
    let config = rig.directory_config(Path::new("/nonexistent/source-volume"));
    let output = CloneRig::run(&config);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("home-coder.before-clone"),
        "{}",
        stderr(&output)
    );
    assert_eq!(rig.record()["state"], "done");
    assert_eq!(rig.record()["files_done"], 2);
    assert_eq!(
        std::fs::read_to_string(rig.slice().join("project/main.rs")).unwrap(),
        "fn main() {}\n"
    );
    assert_eq!(
        std::fs::read_to_string(rig.volume().join("home-coder.before-clone/early.txt")).unwrap(),
        "written during the copy"
    );
    assert!(!staging.exists());
}
