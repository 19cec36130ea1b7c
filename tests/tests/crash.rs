//! Control killed inside a crash window of provisioning, for real: a `control serve` stopped at
//! a failpoint (`control/src/failpoint.rs`) is sent SIGKILL, started again, and must finish the
//! job with exactly one vm-agent for the Agent — none doubled, none lost, none left running
//! after a stop.
//!
//! The windows are the local provider's: the VM's record written but its vm-agent not started
//! yet, and its vm-agent started but the process not recorded yet (before this was fixed, the
//! retry started a second vm-agent there, and one was never stopped again).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use e2e::{Api, KillVmsOnDrop, eventually, start_control, start_control_with, vm_agents};
use serde_json::json;
use test_support::free_port;

/// The restarted replica releases its dead predecessor's job leases as it starts.
fn takes_over_at_once(replica: &e2e::Replica) {
    let taken = "took over the jobs of the replica that served from this data dir before";
    let log = || replica.daemon.log().contains(taken);
    replica
        .daemon
        .wait_until("the takeover", Duration::from_secs(10), log);
}

async fn killed_in_the_window_then_one_vm_agent(failpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _vms = KillVmsOnDrop(data.clone());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // The default five-minute lease: the restarted control is a new replica, and takes the dead
    // one's job over at once (it holds the data dir's lock, so its predecessor is dead).
    let config = e2e::write_control_config(dir.path(), std::slice::from_ref(&url), None);
    let args = e2e::control_args(&config, &data, None);
    // control/src/failpoint.rs: the variable that arms a failpoint.
    let first = start_control_with(&args, port, &[("CONTROL_FAILPOINT", failpoint)]);
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    let image = op
        .post(
            "/api/images",
            json!({"version": "2026.12.0", "agent_version": "0.1.0",
                   "manifest_digest": format!("sha256:{}", "2".repeat(64)),
                   "refs": {"local": "local-2026.12.0"}, "env": {}}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    op.call(
        reqwest::Method::PUT,
        "/api/images/current",
        Some(json!({"image_id": image})),
    )
    .await;
    let account = op.post("/api/accounts", json!({"name": "Acme"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = op
        .post("/api/agents", json!({"name": "dev", "account_id": account}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    first.wait_for_failpoint(Duration::from_secs(30));
    let record = data.join("local-vms").join(&agent).join("vm.json");
    assert!(record.exists(), "the intent is recorded before any process");
    let running_at_kill = vm_agents(&data, &agent).len();
    match failpoint {
        "local-vm-recorded" => assert_eq!(running_at_kill, 0),
        _ => assert_eq!(running_at_kill, 1, "killed after the spawn"),
    }
    first.daemon.signal("-KILL");
    let (status, _) = first.daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success());

    let second = start_control(&args, port);
    takes_over_at_once(&second);
    let api = Api::new(&url, operator.trim());
    eventually("the Agent running", Duration::from_mins(1), || {
        let api = api.clone();
        let agent = agent.clone();
        async move { api.get(&format!("/api/agents/{agent}")).await["state"] == "running" }
    })
    .await;
    eventually("its vm-agent", Duration::from_secs(30), || {
        let found = vm_agents(&data, &agent).len();
        async move { found == 1 }
    })
    .await;
    // Stays one across several supervisor ticks (the restart supervisor looks every second).
    for _ in 0..30 {
        let found = vm_agents(&data, &agent);
        assert_eq!(
            found.len(),
            1,
            "vm-agents for {agent}: {found:?}\n{}",
            second.daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    api.post(&format!("/api/agents/{agent}/stop"), json!({}))
        .await;
    eventually("the Agent paused", Duration::from_mins(1), || {
        let api = api.clone();
        let agent = agent.clone();
        async move { api.get(&format!("/api/agents/{agent}")).await["state"] == "paused" }
    })
    .await;
    eventually("no vm-agent left", Duration::from_secs(30), || {
        let found = vm_agents(&data, &agent).len();
        async move { found == 0 }
    })
    .await;
    let (status, log) = second.daemon.stop();
    assert!(status.success(), "{log}");
}

#[tokio::test]
async fn killed_after_recording_the_vm_before_its_agent_starts() {
    killed_in_the_window_then_one_vm_agent("local-vm-recorded").await;
}

#[tokio::test]
async fn killed_after_the_agent_starts_before_it_is_recorded() {
    killed_in_the_window_then_one_vm_agent("local-agent-spawned").await;
}
