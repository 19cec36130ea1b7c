//! Storage faults, for real: SQLite on a small tmpfs that fills up, SQLite on an ext4 file
//! system the kernel turns read-only, and a PostgreSQL server stopped hard
//! (`pg_ctl stop -m immediate`) and started again under a running `control`.
//!
//! While the storage is unavailable, writes answer 503 problem+json "storage unavailable" with
//! `Retry-After` and `/readyz` says so; once it is back, every request works again by itself —
//! no pooled connection left inside a broken transaction (sqlx's "`begin_with` at non-zero
//! transaction depth"), no ledger row lost or doubled, the audit chain whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::{Api, KillVmsOnDrop, Replica, eventually, ledger_holds, start_control};
use serde_json::{Value, json};
use test_support::{free_port, skip};

/// Unmounts the tmpfs when dropped, so a failed test leaves no mount behind.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// A `size` tmpfs on `dir`, or `None` (announced; a failure in strict mode) when this
    /// process may not mount.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self(dir.to_owned())),
            Ok(out) => {
                skip(&format!(
                    "storage faults on a full disk: cannot mount a tmpfs (run as root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!("storage faults on a full disk: no `mount`: {e}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An ext4 file system in an image file, mounted through a loop device with
/// `errors=remount-ro`; unmounted when dropped.
struct Ext4 {
    image: PathBuf,
    dir: PathBuf,
}

impl Ext4 {
    /// A 64 MB ext4 on `dir`, or `None` (announced; a failure in strict mode) when this process
    /// may not make or mount one.
    fn mount(image: &Path, dir: &Path) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::File::create(image)
            .and_then(|file| file.set_len(64 << 20))
            .unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output();
        if !made.as_ref().is_ok_and(|out| out.status.success()) {
            skip(&format!(
                "storage faults on a read-only disk: mkfs.ext4 failed: {made:?}"
            ));
            return None;
        }
        let disk = Self {
            image: image.to_owned(),
            dir: dir.to_owned(),
        };
        if let Err(why) = disk.mount_again() {
            skip(&format!(
                "storage faults on a read-only disk: cannot mount an ext4 image (run as root, with loop devices): {why}"
            ));
            return None;
        }
        Some(disk)
    }

    fn mount_again(&self) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&self.image)
            .arg(&self.dir)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Makes the kernel take the file system for damaged, as on an I/O error: with
    /// `errors=remount-ro` it turns read-only under whoever has files open in it. `false` when
    /// this kernel has no `trigger_fs_error`.
    fn fail(&self) -> bool {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let device = Path::new(&source).file_name().unwrap_or_default();
        let trigger = Path::new("/sys/fs/ext4")
            .join(device)
            .join("trigger_fs_error");
        std::fs::write(&trigger, "1").is_ok()
    }

    /// The operator's repair once control is stopped: unmount, check, mount again.
    fn repair(&self) {
        let unmounted = Command::new("umount").arg(&self.dir).status().unwrap();
        assert!(unmounted.success(), "umount {}", self.dir.display());
        let checked = Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(&self.image)
            .output()
            .unwrap();
        // 0: clean; 1: errors corrected (the error the kernel recorded).
        assert!(
            matches!(checked.status.code(), Some(0 | 1)),
            "e2fsck: {checked:?}"
        );
        self.mount_again().unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system has no room left.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 512, 1] {
        let block = vec![0u8; chunk];
        while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
    }
}

/// Registers a current image and an account; returns the account's id.
async fn platform(op: &Api) -> String {
    op.current_release("2026.12.0", json!({"local": "local-2026.12.0"}))
        .await;
    op.account("Acme").await
}

async fn wait_state(api: &Api, agent: &str, state: &str) {
    eventually(
        &format!("Agent {agent} {state}"),
        Duration::from_mins(1),
        || {
            let (api, agent) = (api.clone(), agent.to_owned());
            let state = state.to_owned();
            async move { api.get(&format!("/api/agents/{agent}")).await["state"] == state.as_str() }
        },
    )
    .await;
}

async fn provision(api: &Api, account: &str, name: &str) -> String {
    let agent = api
        .post("/api/agents", json!({"name": name, "account_id": account}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_state(api, &agent, "running").await;
    agent
}

/// `/readyz`'s status and body.
async fn readyz(api: &Api) -> (u16, Value) {
    api.call(reqwest::Method::GET, "/readyz", None).await
}

/// Once the storage is back: ready again, every kind of request works, the ledger tiles and
/// the audit chain verifies, and no connection was reused inside a broken transaction.
async fn everything_works_again(op: &Api, replica: &Replica, account: &str, agents: &[&str]) {
    eventually("/readyz ready again", Duration::from_secs(30), || {
        let op = op.clone();
        async move { readyz(&op).await.0 == 200 }
    })
    .await;
    for agent in agents {
        op.post(&format!("/api/agents/{agent}/stop"), json!({}))
            .await;
        wait_state(op, agent, "paused").await;
        op.post(&format!("/api/agents/{agent}/start"), json!({}))
            .await;
        wait_state(op, agent, "running").await;
    }
    let fresh = provision(op, account, "after").await;
    let mut all = agents.to_vec();
    all.push(&fresh);
    ledger_holds(op, &all, "after the storage came back").await;
    let verified = op.get("/api/audit/verify").await;
    assert_eq!(verified["ok"], true, "{verified:#}");
    let log = replica.daemon.log();
    assert!(
        !log.contains("non-zero transaction depth"),
        "a pooled connection served inside a broken transaction:\n{log}"
    );
}

/// `control` on a SQLite database in `disk`, with a current image, an account and a running
/// Agent.
struct OnDisk {
    replica: Replica,
    args: Vec<String>,
    port: u16,
    op: Api,
    account: String,
    agent: String,
}

async fn control_on(dir: &Path, disk: &Path) -> OnDisk {
    let data = dir.join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = e2e::write_control_config(dir, std::slice::from_ref(&url), Some(3));
    let database = format!("sqlite:{}", disk.join("control.db").display());
    let args = e2e::control_args(&config, &data, Some(&database));
    let replica = start_control(&args, port);
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    let account = platform(&op).await;
    let agent = provision(&op, &account, "dev").await;
    OnDisk {
        replica,
        args,
        port,
        op,
        account,
        agent,
    }
}

/// Sends writes until one is refused: SQLite reuses room it already has in its write-ahead
/// log, so the first few may still succeed.
async fn first_refused_write(op: &Api) -> reqwest::Response {
    for n in 0..3000 {
        let response = op
            .client
            .post(format!("{}/api/accounts", op.url))
            .bearer_auth(&op.token)
            .json(&json!({"name": format!("filler-{n}")}))
            .send()
            .await
            .unwrap();
        if !response.status().is_success() {
            return response;
        }
    }
    panic!("no write was refused");
}

/// A refused write is a 503 problem document saying the storage is unavailable and when to
/// retry; `/readyz` fails saying so; reads still answer.
async fn storage_unavailable(refused: reqwest::Response, op: &Api, agent: &str) {
    assert_eq!(refused.status().as_u16(), 503);
    let headers = refused.headers().clone();
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{headers:?}"
    );
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{headers:?}");
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("storage unavailable"),
        "{problem:#}"
    );
    let (status, body) = readyz(op).await;
    assert_eq!(status, 503, "{body:#}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("storage unavailable"),
        "{body:#}"
    );
    // Reads need no room.
    assert_eq!(op.get(&format!("/api/agents/{agent}")).await["id"], agent);
}

/// The SQLite database on a 24-megabyte tmpfs: filled to the last byte, writes fail with a 503
/// that says why and when to retry, reads still answer, `/readyz` fails; the space freed,
/// everything works again.
#[tokio::test]
async fn a_full_disk_answers_503_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "24m") else {
        return;
    };
    let _vms = KillVmsOnDrop(dir.path().join("data"));
    let on = control_on(dir.path(), &disk.0).await;

    let filler = disk.0.join("filler");
    fill(&filler);
    let refused = first_refused_write(&on.op).await;
    storage_unavailable(refused, &on.op, &on.agent).await;

    std::fs::remove_file(&filler).unwrap();
    everything_works_again(&on.op, &on.replica, &on.account, &[&on.agent]).await;
    let (status, log) = on.replica.daemon.stop();
    assert!(status.success(), "{log}");
}

/// The SQLite database on an ext4 file system that the kernel turns read-only under control,
/// as it does on an I/O error (`errors=remount-ro`): writes fail with the same 503, reads
/// answer, `/readyz` fails. Such a file system comes back only through the operator's repair
/// (stop control, check the file system, mount it again, start control), and then everything
/// works, with the ledger and the audit chain whole.
#[tokio::test]
async fn a_disk_turned_read_only_answers_503_and_recovers_after_repair() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Ext4::mount(&dir.path().join("ext4.img"), &dir.path().join("disk")) else {
        return;
    };
    let _vms = KillVmsOnDrop(dir.path().join("data"));
    let on = control_on(dir.path(), &disk.dir).await;

    if !disk.fail() {
        skip("storage faults on a read-only disk: this kernel has no ext4 trigger_fs_error");
        return;
    }
    let refused = first_refused_write(&on.op).await;
    assert!(
        on.replica.daemon.is_running(),
        "control exited on a read-only disk:\n{}",
        on.replica.daemon.log()
    );
    storage_unavailable(refused, &on.op, &on.agent).await;

    // Stopping cannot write what it would write behind; it must still end.
    let (_, log) = on.replica.daemon.stop();
    assert!(!log.contains("panicked"), "{log}");
    disk.repair();
    let replica = start_control(&on.args, on.port);
    // A new client: the old one's kept-alive connections went with the stopped process.
    let op = Api::new(&on.op.url, &on.op.token);
    everything_works_again(&op, &replica, &on.account, &[&on.agent]).await;
    let (status, log) = replica.daemon.stop();
    assert!(status.success(), "{log}");
}

/// A PostgreSQL cluster of the test's own stopped hard (`pg_ctl stop -m immediate`) while a
/// stream of writes runs, then started again: control reconnects by itself, every write either
/// happened once or was refused with a 503, and the ledger and audit chain stay whole.
#[tokio::test]
async fn postgres_stopped_hard_and_started_again_is_reconnected() {
    let cluster = match test_support::OwnCluster::start() {
        Ok(cluster) => cluster,
        Err(why) => {
            skip(&format!("storage faults on PostgreSQL: {why}"));
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _vms = KillVmsOnDrop(data.clone());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = e2e::write_control_config(dir.path(), std::slice::from_ref(&url), Some(3));
    let args = e2e::control_args(&config, &data, Some(&cluster.admin_url));
    let replica = start_control(&args, port);
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    let account = platform(&op).await;
    let agent = provision(&op, &account, "dev").await;

    let stream = {
        let op = op.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in 0..60 {
                let (status, body) = op
                    .call(
                        reqwest::Method::POST,
                        "/api/accounts",
                        Some(json!({"name": format!("stream-{n}")})),
                    )
                    .await;
                assert!(
                    (200..300).contains(&status) || status == 503,
                    "{status} {body:#}"
                );
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.stop_immediate().unwrap();
    let (status, body) = readyz(&op).await;
    assert_eq!(status, 503, "{body:#}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart().unwrap();
    let statuses = stream.await.unwrap();
    assert!(
        statuses.contains(&503),
        "no write met the stopped server: {statuses:?}"
    );
    assert!(
        statuses.last().is_some_and(|s| (200..300).contains(s)),
        "writes did not come back: {statuses:?}"
    );
    everything_works_again(&op, &replica, &account, &[&agent]).await;
    let (status, log) = replica.daemon.stop();
    assert!(status.success(), "{log}");
}
