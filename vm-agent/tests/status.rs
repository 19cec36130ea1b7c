//! `vm-agent status` and the unit file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{Rig, eventually};
use test_support::workspace_bin;

#[test]
fn status_shows_a_support_engineer_what_is_going_on() {
    let mut rig = Rig::new();
    rig.start_control();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(
        &agent,
        "the tunnel up and a heartbeat",
        Duration::from_secs(20),
        || {
            let status = rig.status();
            status["tunnel"]["state"] == "ready"
                && status["heartbeat"]["last_sequence"].as_u64().unwrap_or(0) >= 1
        },
    );
    let socket = rig.path("run/status.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(rig.path("run"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let output = Command::new(workspace_bin("vm-agent"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    for expected in [
        "agent agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ",
        "image 2026.11.0",
        "cloudflared  READY, 4 connections",
        "slice",
        "MOUNTED",
        "control      OK · last heartbeat",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    agent.stop();
    let down = Command::new(workspace_bin("vm-agent"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("is vm-agent running?"));
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    common::verify_unit(
        "vm-agent.service",
        &[
            "Type=notify",
            "WatchdogSec=",
            "Restart=always",
            "StartLimitIntervalSec=0",
            "OOMScoreAdjust=",
            "MemoryMax=",
            "NoNewPrivileges=yes",
        ],
    );
}
