//! The support view through the API: what `vm-agent status` shows on a VM (tunnel restarts and
//! last exit, slice state) is read from `GET /api/agents/{id}` within a heartbeat of the
//! vm-agent reporting it. On SQLite with one replica, and on PostgreSQL with two replicas where
//! the agents heartbeat only to the first and the dashboard reads from the second, which sees
//! only what is written to the database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{Api, KillVmsOnDrop, eventually, processes_under, start_control, write_control_config};
use serde_json::{Value, json};
use test_support::{TestDb, free_port, workspace_bin};

/// The heartbeat interval of the end-to-end configuration (1 s), plus slack for a loaded
/// machine: how long after the vm-agent reports a change the API may take to show it.
const ONE_HEARTBEAT: Duration = Duration::from_secs(5);
/// How long anything else may take (provisioning, the slice's 30 s check).
const WITHIN: Duration = Duration::from_mins(1);

/// What `vm-agent status` shows on the VM, or empty while it cannot answer.
fn vm_status(vm_dir: &Path) -> String {
    let output = Command::new(workspace_bin("vm-agent"))
        .arg("status")
        .arg("--socket")
        .arg(vm_dir.join("status.sock"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The stand-in cloudflared the VM's vm-agent supervises.
fn cloudflared_pid(vm_dir: &Path) -> Option<u32> {
    processes_under(vm_dir)
        .into_iter()
        .find(|(_, cmd)| {
            cmd.split(' ')
                .next()
                .is_some_and(|program| program.ends_with("/stand-in-cloudflared"))
        })
        .map(|(pid, _)| pid)
}

async fn support_is_seen_within_a_heartbeat(db: Option<TestDb>, replicas: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _vms = KillVmsOnDrop(data.clone());
    let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
    let url = |n: usize| format!("http://127.0.0.1:{}", ports[n]);
    // The agents report to the first replica only.
    let config = write_control_config(dir.path(), &[url(0)], None);
    let args = e2e::control_args(&config, &data, db.as_ref().map(|db| db.url.as_str()));
    let _replicas: Vec<_> = ports.iter().map(|&p| start_control(&args, p)).collect();
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url(0), operator.trim());
    // The dashboard reads from the last replica.
    let dashboard = Api::new(&url(replicas - 1), operator.trim());
    op.current_release("2026.11.0", json!({"local": "local-2026.11.0"}))
        .await;
    let account = op.post("/api/accounts", json!({"name": "Acme"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = op
        .post("/api/agents", json!({"name": "dev", "account_id": account}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view = || async { dashboard.get(&format!("/api/agents/{id}")).await };
    let support = |view: &Value, path: &[&str]| {
        path.iter()
            .fold(&view["support"], |v, key| &v[*key])
            .clone()
    };
    eventually("the agent reporting a ready tunnel", WITHIN, || async {
        let v = view().await;
        support(&v, &["tunnel", "state"]) == "ready"
            && support(&v, &["slice", "state"]) == "mounted"
    })
    .await;
    let v = view().await;
    assert_eq!(support(&v, &["tunnel", "restarts"]), 0, "{v:#}");
    assert!(support(&v, &["boot_id"]).is_string(), "{v:#}");
    assert_eq!(support(&v, &["image_version"]), "2026.11.0");
    let vm_dir = data.join("local-vms").join(&id);

    // The tunnel dies: vm-agent restarts it and reports the restart and the exit (137, SIGKILL).
    let pid = cloudflared_pid(&vm_dir).expect("a cloudflared runs");
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually("vm-agent counting the restart", WITHIN, || async {
        vm_status(&vm_dir).contains("1 restarts")
    })
    .await;
    eventually("the restart through the API", ONE_HEARTBEAT, || async {
        let v = view().await;
        support(&v, &["tunnel", "restarts"]) == 1 && support(&v, &["tunnel", "last_exit"]) == 137
    })
    .await;

    // The slice is no longer mounted: vm-agent reports it missing at its next check.
    std::fs::write(
        vm_dir.join("mountinfo"),
        "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n",
    )
    .unwrap();
    eventually("vm-agent seeing the slice missing", WITHIN, || async {
        vm_status(&vm_dir).contains("MISSING")
    })
    .await;
    eventually(
        "the missing slice through the API",
        ONE_HEARTBEAT,
        || async { support(&view().await, &["slice", "state"]) == "missing" },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    support_is_seen_within_a_heartbeat(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_read_from_the_other_replica() {
    if let Some(db) = TestDb::postgres().await {
        support_is_seen_within_a_heartbeat(Some(db), 2).await;
    }
}
