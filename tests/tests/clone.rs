//! Cloning end to end: a real `control serve` with the local provider's real vm-agents. An
//! Agent's slice is filled with a tree of nested directories, modes (0600, 0755, a setgid
//! directory), symlinks (relative and dangling), a hard-linked pair, a `user.` extended
//! attribute and (as root) files of other owners; the Agent is cloned while running, and the
//! clone's slice must equal the source's (paths, types, modes, owners, sizes, contents, link
//! targets, hard-link groups, xattrs, file times), the source must be running again with its
//! slice unchanged, both Agents carry `agent.clone`, and the ledger invariants hold for both.
//! A stopped source cloned stays stopped. And control killed inside the clone's crash windows
//! (the copy made, or the source powered on again, but not recorded) finishes the clone once
//! restarted, with one copy and one vm-agent each.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // the test compares with the wall clock the binaries use

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{
    Api, KillVmsOnDrop, eventually, ledger_holds, millis, start_control, start_control_with,
    vm_agents, write_control_config,
};
use serde_json::{Value, json};
use sha2::Digest;
use test_support::{TestDb, free_port};

const WITHIN: Duration = Duration::from_mins(1);

/// One entry of a tree, as compared.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    /// Permission bits with setuid/setgid/sticky (none for a symlink).
    mode: Option<u32>,
    uid: u32,
    gid: u32,
    size: u64,
    sha256: Option<String>,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// A file's modification time (directories' change as the tree is read).
    mtime: Option<(i64, i64)>,
}

/// A tree: its entries by relative path, and its hard-link groups (paths sharing an inode).
#[derive(Debug, PartialEq, Eq)]
struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
    links: BTreeSet<BTreeSet<PathBuf>>,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0_u8; 4096];
    let Ok(len) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return BTreeMap::new();
    };
    names[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|name| {
            let name = String::from_utf8(name.to_vec()).ok()?;
            let mut value = vec![0_u8; 65_536];
            let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).ok()?;
            value.truncate(len);
            Some((name, value))
        })
        .collect()
}

fn walk(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_owned();
        let kind = if meta.file_type().is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else {
            "file"
        };
        if kind == "dir" {
            for child in std::fs::read_dir(&path).unwrap() {
                stack.push(child.unwrap().path());
            }
        }
        if kind == "file" && meta.nlink() > 1 {
            inodes.entry(meta.ino()).or_default().insert(rel.clone());
        }
        entries.insert(
            rel,
            Entry {
                kind,
                mode: (kind != "symlink").then_some(meta.mode() & 0o7777),
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == "dir" { 0 } else { meta.size() },
                sha256: (kind == "file")
                    .then(|| format!("{:x}", sha2::Sha256::digest(std::fs::read(&path).unwrap()))),
                target: (kind == "symlink").then(|| std::fs::read_link(&path).unwrap()),
                xattrs: xattrs(&path),
                mtime: (kind != "dir").then(|| (meta.mtime(), meta.mtime_nsec())),
            },
        );
    }
    Tree {
        entries,
        links: inodes.into_values().collect(),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Fills a slice with what a clone must keep. Returns whether it holds an extended attribute.
fn fill(slice: &Path) -> bool {
    std::fs::create_dir_all(slice.join("projects/app/src")).unwrap();
    std::fs::write(slice.join("projects/app/src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(slice.join(".secret"), "token\n").unwrap();
    chmod(&slice.join(".secret"), 0o600);
    std::fs::write(slice.join("projects/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    chmod(&slice.join("projects/run.sh"), 0o755);
    std::fs::create_dir(slice.join("shared")).unwrap();
    chmod(&slice.join("shared"), 0o2775);
    std::fs::write(slice.join("shared/big.bin"), vec![7_u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("../projects/run.sh", slice.join("shared/run")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", slice.join("dangling")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", slice.join("outside")).unwrap();
    std::fs::write(slice.join("projects/a"), "one inode\n").unwrap();
    std::fs::hard_link(slice.join("projects/a"), slice.join("shared/b")).unwrap();
    let tagged = slice.join("projects/tagged.txt");
    std::fs::write(&tagged, "tagged\n").unwrap();
    let xattr = rustix::fs::setxattr(
        &tagged,
        "user.origin",
        b"clone-test",
        rustix::fs::XattrFlags::empty(),
    );
    if let Err(e) = &xattr {
        test_support::skip(&format!(
            "the filesystem under {} refuses user xattrs ({e})",
            slice.display()
        ));
    }
    if rustix::process::geteuid().is_root() {
        let other = slice.join("projects/others.txt");
        std::fs::write(&other, "not root's\n").unwrap();
        std::os::unix::fs::chown(&other, Some(1234), Some(2345)).unwrap();
        std::os::unix::fs::lchown(slice.join("dangling"), Some(1234), Some(1234)).unwrap();
        std::os::unix::fs::chown(slice.join("shared"), Some(4321), Some(4321)).unwrap();
    } else {
        test_support::skip("files of other owners need root");
    }
    xattr.is_ok()
}

/// Nothing of the copies is left beside the VMs once their clones took them.
fn no_copy_left(data: &Path) {
    let seeds = data.join("local-vms/.slice-seeds");
    let left: Vec<_> = std::fs::read_dir(&seeds)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "copies left over: {left:?}");
}

fn slice_of(data: &Path, agent: &str) -> PathBuf {
    data.join("local-vms").join(agent).join("data/home-coder")
}

async fn view(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/agents/{id}")).await
}

async fn wait_running(api: &Api, id: &str) {
    eventually("the agent running and heartbeating", WITHIN, || async {
        let v = view(api, id).await;
        v["state"] == "running"
            && v["healthy"] == true
            && v["operation"].is_null()
            && v["cloning_to"].is_null()
    })
    .await;
}

async fn clone_events(op: &Api, id: &str) -> Vec<Value> {
    op.get(&format!("/api/audit?resource_id={id}")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "agent.clone")
        .cloned()
        .collect()
}

async fn clones_keep_the_slice(db: Option<TestDb>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = write_control_config(dir.path(), std::slice::from_ref(&url), None);
    let data = dir.path().join("data");
    let args = e2e::control_args(&config, &data, db.as_ref().map(|db| db.url.as_str()));
    let replica = start_control(&args, port);
    let _cleanup = KillVmsOnDrop(dir.path().to_owned());
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    op.current_release("2026.11.0", json!({"local": "local-2026.11.0"}))
        .await;
    let acme = op.account("acme").await;
    let token = op
        .post(&format!("/api/accounts/{acme}/tokens"), json!({}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api::new(&url, &token);
    let source = api.post("/api/agents", json!({"name": "dev"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_running(&op, &source).await;
    let has_xattr = fill(&slice_of(&data, &source));
    let before = walk(&slice_of(&data, &source));
    assert!(before.entries.len() > 10 && !before.links.is_empty());
    op.current_release("2026.12.0", json!({"local": "local-2026.12.0"}))
        .await;

    // A running source.
    let accepted_at = now_ms();
    let (status, cloned) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/agents/{source}/clone"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 202, "{cloned:#}");
    let clone = cloned["id"].as_str().unwrap().to_owned();
    assert_eq!(cloned["image"]["version"], "2026.12.0");
    wait_running(&op, &clone).await;
    wait_running(&op, &source).await;
    let copied = walk(&slice_of(&data, &clone));
    assert_eq!(
        copied, before,
        "the clone's slice differs from the source's"
    );
    if has_xattr {
        assert_eq!(
            copied.entries[Path::new("projects/tagged.txt")].xattrs["user.origin"],
            b"clone-test"
        );
    }
    assert_eq!(
        walk(&slice_of(&data, &source)),
        before,
        "the source's slice changed"
    );
    assert_eq!(vm_agents(&data, &source).len(), 1, "the source runs again");
    assert_eq!(vm_agents(&data, &clone).len(), 1);
    // The source was paused for the copy, after the clone was asked for, and runs again.
    let periods = op.get(&format!("/api/agents/{source}/timeline")).await["periods"]
        .as_array()
        .unwrap()
        .clone();
    let period_states: Vec<&str> = periods
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(period_states.last(), Some(&"running"), "{periods:#?}");
    assert!(
        periods.iter().any(|p| p["state"] == "paused"
            && millis(&p["started_at"]).unwrap() >= accepted_at
            && !p["ended_at"].is_null()),
        "no pause for the copy: {periods:#?}"
    );
    let on_source = clone_events(&op, &source).await;
    assert_eq!(on_source.len(), 1);
    assert_eq!(on_source[0]["details"]["clone_id"], clone.as_str());
    let on_clone = clone_events(&op, &clone).await;
    assert_eq!(on_clone.len(), 1);
    assert_eq!(on_clone[0]["details"]["source_id"], source.as_str());

    // A stopped source stays stopped.
    api.post(&format!("/api/agents/{source}/stop"), json!({}))
        .await;
    eventually("the source stopped", WITHIN, || async {
        let v = view(&op, &source).await;
        v["state"] == "paused" && v["operation"].is_null()
    })
    .await;
    let second = api
        .post(
            &format!("/api/agents/{source}/clone"),
            json!({"name": "second"}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_running(&op, &second).await;
    assert_eq!(walk(&slice_of(&data, &second)), before);
    let v = view(&op, &source).await;
    assert_eq!(v["state"], "paused");
    assert!(v["cloning_to"].is_null());
    assert!(
        vm_agents(&data, &source).is_empty(),
        "the stopped source runs"
    );
    assert_eq!(walk(&slice_of(&data, &source)), before);

    no_copy_left(&data);
    ledger_holds(&op, &[&source, &clone, &second], "after cloning").await;
    let (status, log) = replica.daemon.stop();
    assert!(status.success(), "{log}");
}

/// Control killed inside a crash window of the clone's job (a failpoint stops it once the
/// step `window` has acted, before the step is recorded), then started again: the restarted
/// replica takes the job over and finishes it with one clone whose slice equals the source's,
/// the source running again with one vm-agent, nothing of the copy left over, and the ledger
/// whole.
async fn killed_inside_the_clone(window: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // A short lease: the restarted control is a new replica and takes the job over soon.
    let config = write_control_config(dir.path(), std::slice::from_ref(&url), Some(3));
    let data = dir.path().join("data");
    let args = e2e::control_args(&config, &data, None);
    let _cleanup = KillVmsOnDrop(dir.path().to_owned());
    // Armed from the start: only a clone's job has that step.
    let first = start_control_with(&args, port, &[("CONTROL_FAILPOINT", window)]);
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    op.current_release("2026.11.0", json!({"local": "local-2026.11.0"}))
        .await;
    let acme = op.account("acme").await;
    let source = op
        .post("/api/agents", json!({"name": "dev", "account_id": acme}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_running(&op, &source).await;
    fill(&slice_of(&data, &source));
    let before = walk(&slice_of(&data, &source));
    op.current_release("2026.12.0", json!({"local": "local-2026.12.0"}))
        .await;
    let clone = op
        .post(&format!("/api/agents/{source}/clone"), json!({}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.wait_for_failpoint(Duration::from_mins(1));
    first.daemon.signal("-KILL");
    let (status, _) = first.daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success());

    let second = start_control(&args, port);
    wait_running(&op, &clone).await;
    wait_running(&op, &source).await;
    assert_eq!(walk(&slice_of(&data, &clone)), before, "{window}");
    assert_eq!(walk(&slice_of(&data, &source)), before, "{window}");
    // One vm-agent each, across several of the supervisor's ticks.
    for _ in 0..20 {
        assert_eq!(vm_agents(&data, &source).len(), 1, "{window}");
        assert_eq!(vm_agents(&data, &clone).len(), 1, "{window}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    no_copy_left(&data);
    assert_eq!(clone_events(&op, &source).await.len(), 1);
    assert_eq!(clone_events(&op, &clone).await.len(), 1);
    ledger_holds(&op, &[&source, &clone], window).await;
    let (status, log) = second.daemon.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_copy_before_it_is_recorded() {
    killed_inside_the_clone("job-step:slice_copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_source_is_powered_on_before_it_is_recorded() {
    killed_inside_the_clone("job-step:source_power_on").await;
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    clones_keep_the_slice(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        clones_keep_the_slice(Some(db)).await;
    }
}
