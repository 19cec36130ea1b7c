//! The reaper's sweep, in this process: it reaps exited children nobody awaits and never one
//! registered with `Children`. A test binary of its own, since a sweep reaps every unregistered
//! zombie of the process, and other tests' daemons are this process's children too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::Mutex;
use vm_agent::reaper::{Children, sweep};

/// The tests' sweeps would reap each other's zombies.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

fn until_zombie(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_zombie(pid) {
        assert!(Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child nobody will wait on, as an orphan is; returns its pid once it has exited.
fn unwaited(script: &str) -> u32 {
    let child = std::process::Command::new("sh")
        .args(["-c", script])
        .spawn()
        .unwrap();
    let pid = child.id();
    drop(child);
    until_zombie(pid);
    pid
}

#[tokio::test]
async fn an_exited_child_nobody_awaits_is_reaped_with_its_status() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let exited = unwaited("exit 5");
    let killed = unwaited("kill -KILL $$");
    let swept = sweep(&Children::default());
    assert!(
        swept.reaped.contains(&(i32::try_from(exited).unwrap(), 5)),
        "{swept:?}"
    );
    assert!(
        swept
            .reaped
            .contains(&(i32::try_from(killed).unwrap(), 137)),
        "{swept:?}"
    );
    assert!(!swept.blocked && swept.error.is_none(), "{swept:?}");
    assert!(!std::path::Path::new(&format!("/proc/{exited}")).exists());
    assert!(!std::path::Path::new(&format!("/proc/{killed}")).exists());
}

#[tokio::test]
async fn a_registered_child_keeps_its_exit_status_for_its_owner() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let children = Children::default();
    let mut child = children
        .spawn(Command::new("sh").args(["-c", "exit 7"]))
        .unwrap();
    let pid = child.id().unwrap();
    assert!(children.is_registered(i32::try_from(pid).unwrap()));
    until_zombie(pid);
    // Exited before a second, unregistered one: it is first in line and hides it.
    let orphan = unwaited("exit 0");
    let swept = sweep(&children);
    assert!(swept.reaped.is_empty() && swept.blocked, "{swept:?}");
    assert!(is_zombie(pid) && is_zombie(orphan), "both left alone");

    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(7), "the owner sees the real exit code");
    let swept = sweep(&children);
    assert_eq!(swept.reaped, [(i32::try_from(orphan).unwrap(), 0)]);
    assert!(!swept.blocked);
    drop(child);
    assert!(!children.is_registered(i32::try_from(pid).unwrap()));
}
