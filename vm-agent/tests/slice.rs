//! The slice guard, observed from outside.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Rig, eventually};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn a_missing_slice_is_reported_and_never_created() {
    let mut rig = Rig::new();
    rig.start_control();
    std::fs::remove_dir_all(rig.slice()).unwrap();
    rig.mount_table(None);
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "a heartbeat saying so", WITHIN, || {
        rig.heartbeats()
            .iter()
            .any(|h| h["slice"]["state"] == "missing")
    });
    assert_eq!(rig.status()["slice"]["report"]["state"], "missing");
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        !rig.slice().exists(),
        "nothing was created in the slice's place"
    );
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains("[slice]") && l.contains("ERROR"))
        .map(str::to_owned);
    let line = line.expect("an ERROR line from the slice guard");
    assert!(
        line.contains("not mounted")
            && line.contains("message_id=c7a9e1b3d5f74a2c8e0b6d4f2a1c3e5b"),
        "{line}"
    );

    // The volume is attached and mounted again: the guard notices.
    std::fs::create_dir_all(rig.slice()).unwrap();
    rig.mount_slice(false);
    eventually(&agent, "the slice back", WITHIN, || {
        rig.status()["slice"]["report"]["state"] == "mounted"
    });
    let (_, log) = agent.stop();
    assert!(
        log.contains("message_id=2e4c6a8b0d1f43e5a7c9b1d3f5e7a9c2"),
        "{log}"
    );
}

#[test]
fn a_plain_directory_is_not_a_mounted_slice() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.mount_table(None);
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the missing state", WITHIN, || {
        rig.status()["slice"]["report"]["state"] == "missing"
    });
    assert!(
        rig.status()["slice"]["detail"]
            .as_str()
            .unwrap()
            .contains("is not on a mounted volume")
    );
    assert_eq!(
        std::fs::read_dir(rig.slice()).unwrap().count(),
        0,
        "nothing was written in it"
    );
    agent.stop();
}

#[test]
fn a_read_only_slice_is_reported() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.mount_slice(true);
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the read-only state", WITHIN, || {
        rig.heartbeats()
            .iter()
            .any(|h| h["slice"]["state"] == "read_only")
    });
    let (_, log) = agent.stop();
    assert!(log.contains("is mounted read-only"), "{log}");
}

#[test]
fn a_mounted_slice_reports_its_room() {
    let mut rig = Rig::new();
    rig.start_control();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "a heartbeat with the slice", WITHIN, || {
        rig.heartbeats()
            .iter()
            .any(|h| h["slice"]["state"] == "mounted")
    });
    let beat = rig
        .heartbeats()
        .into_iter()
        .find(|h| h["slice"]["state"] == "mounted")
        .unwrap();
    assert!(beat["slice"]["free_bytes"].as_u64().unwrap() > 0);
    assert!(beat["slice"]["total_inodes"].as_u64().unwrap() > 0);
    assert_eq!(
        std::fs::read_dir(rig.slice()).unwrap().count(),
        0,
        "the probe file is removed"
    );
    agent.stop();
}

/// With the privilege to mount, a real tmpfs read through the real mount table.
#[test]
fn a_real_tmpfs_mount_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("home-coder");
    std::fs::create_dir(&mount_point).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mount_point)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        test_support::skip("the real tmpfs slice test: this user cannot mount file systems");
        return;
    }
    let unmount = || {
        let _ = Command::new("umount").arg(&mount_point).status();
    };
    let uid = nix::unistd::getuid().as_raw();
    let config = vm_agent::config::Slice {
        path: mount_point.clone(),
        owner: "root".to_owned(),
        owner_uid: uid,
        mountinfo: "/proc/self/mountinfo".into(),
        check_interval: Duration::from_secs(1),
        nearly_full_percent: 95,
    };
    let status = vm_agent::slice::check(&config);
    assert_eq!(
        status.report.state,
        control_api::agent::SliceState::Mounted,
        "{}",
        status.detail
    );
    let total = status.report.total_bytes.unwrap();
    assert!(
        (8 * 1024 * 1024 - 4096..=8 * 1024 * 1024).contains(&total),
        "{total}"
    );

    // Someone else's slice is reported, not used.
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("the nobody user");
    let foreign = vm_agent::config::Slice {
        owner: "nobody".to_owned(),
        owner_uid: nobody.uid.as_raw(),
        ..config.clone()
    };
    assert_eq!(
        vm_agent::slice::check(&foreign).report.state,
        control_api::agent::SliceState::WrongOwner
    );

    // Filled past 95 %, it is nearly full, and says how much is left.
    std::fs::write(
        mount_point.join("big"),
        vec![0_u8; 8 * 1024 * 1024 - 200 * 1024],
    )
    .unwrap();
    let full = vm_agent::slice::check(&config);
    assert_eq!(
        full.report.state,
        control_api::agent::SliceState::NearlyFull,
        "{}",
        full.detail
    );
    assert!(full.report.free_bytes.unwrap() < 400 * 1024);
    std::fs::remove_file(mount_point.join("big")).unwrap();

    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mount_point)
        .status()
        .unwrap();
    assert!(remounted.success());
    assert_eq!(
        vm_agent::slice::check(&config).report.state,
        control_api::agent::SliceState::ReadOnly
    );
    unmount();
    let gone = vm_agent::slice::check(&config);
    assert_eq!(
        gone.report.state,
        control_api::agent::SliceState::Missing,
        "{}",
        gone.detail
    );
    assert_eq!(
        std::fs::read_dir(&mount_point).unwrap().count(),
        0,
        "nothing was written to the root disk"
    );
}
