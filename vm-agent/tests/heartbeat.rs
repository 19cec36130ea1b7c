//! Registration and heartbeats against the stand-in control.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{BOOTSTRAP, Rig, eventually};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn the_bootstrap_token_is_exchanged_once_for_a_credential() {
    let mut rig = Rig::new();
    rig.start_control();
    let config = rig.config();
    let agent = rig.start_agent(&config, &[]);
    eventually(&agent, "three heartbeats", WITHIN, || {
        rig.heartbeats().len() >= 3
    });
    let credential = rig.path("state/credential");
    assert_eq!(
        std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&credential)
            .unwrap()
            .starts_with("cred_")
    );
    assert!(
        !rig.path("bootstrap-token").exists(),
        "the used bootstrap token is removed"
    );
    let sequences: Vec<u64> = rig
        .heartbeats()
        .iter()
        .map(|h| h["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(&sequences[..3], [1, 2, 3]);
    let (_, log) = agent.stop();
    assert!(
        !log.contains(BOOTSTRAP),
        "the bootstrap token reached the log"
    );
    assert!(
        !log.contains(std::fs::read_to_string(&credential).unwrap().as_str()),
        "the credential reached the log"
    );

    // Restarted, the agent uses its credential and never registers again.
    let before = rig.heartbeats().len();
    let agent = rig.start_agent(&config, &[]);
    eventually(&agent, "heartbeats after the restart", WITHIN, || {
        rig.heartbeats().len() >= before + 2
    });
    agent.stop();
    let registrations: Vec<_> = rig
        .control_events()
        .into_iter()
        .filter(|e| e["event"] == "register")
        .collect();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    let beats = rig.heartbeats();
    assert_eq!(
        beats[before]["sequence"], 1,
        "a new agent process counts from 1"
    );
    assert_eq!(
        beats[before]["boot_id"], beats[0]["boot_id"],
        "the same boot"
    );

    // The token is spent: control refuses it from now on.
    std::fs::write(rig.path("bootstrap-token"), BOOTSTRAP).unwrap();
    std::fs::remove_file(&credential).unwrap();
    let agent = rig.start_agent(&config, &[]);
    eventually(&agent, "the refusal", WITHIN, || {
        agent.log().contains("control refused the bootstrap token")
    });
    agent.stop();
    let refused = rig
        .control_events()
        .into_iter()
        .filter(|e| e["event"] == "register" && e["ok"] == false)
        .count();
    assert!(refused >= 1);
}

#[test]
fn heartbeats_carry_what_control_needs_and_nothing_else() {
    let mut rig = Rig::new();
    rig.start_control();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "a heartbeat with the tunnel up", WITHIN, || {
        rig.heartbeats()
            .iter()
            .any(|h| h["cloudflared"]["state"] == "ready")
    });
    agent.stop();
    let beat = rig
        .heartbeats()
        .into_iter()
        .find(|h| h["cloudflared"]["state"] == "ready")
        .unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(beat["boot_id"], boot_id.trim());
    assert_eq!(beat["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(beat["image_version"], "2026.11.0");
    assert_eq!(beat["cloudflared"]["ready_connections"], 4);
    assert!(beat["host"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(beat["host"]["cpus"].as_u64().unwrap() >= 1);
    let keys: Vec<&str> = beat
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "agent_id",
            "agent_uptime_s",
            "agent_version",
            "boot_id",
            "cloudflared",
            "host",
            "image_version",
            "sequence",
            "slice"
        ]
    );
    assert_eq!(beat["agent_id"], "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ");
}

#[test]
fn an_unreachable_control_neither_stops_the_tunnel_nor_floods_the_log() {
    let mut rig = Rig::new();
    rig.start_control();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "heartbeats", WITHIN, || rig.heartbeats().len() >= 2);
    rig.stop_control();
    eventually(&agent, "the failures noticed", WITHIN, || {
        rig.status()["heartbeat"]["consecutive_failures"]
            .as_u64()
            .unwrap()
            >= 3
    });
    assert_eq!(
        rig.status()["tunnel"]["state"],
        "ready",
        "the tunnel keeps running"
    );
    assert_eq!(rig.starts().len(), 1, "cloudflared was not restarted");
    let unreachable = agent
        .log()
        .matches("message_id=9a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5")
        .count();
    assert_eq!(
        unreachable, 1,
        "logged once when it started, not per attempt"
    );

    let before = rig.heartbeats().len();
    rig.start_control();
    eventually(&agent, "heartbeats again", WITHIN, || {
        rig.heartbeats().len() > before
    });
    let (_, log) = agent.stop();
    assert!(
        log.contains("control reachable again")
            && log.contains("message_id=6f5e4d3c2b1a40f9e8d7c6b5a4f3e2d1"),
        "{log}"
    );
}
