//! Orphans under the agent, observed from outside: the agent is a child subreaper, so what
//! cloudflared forks and abandons becomes the agent's child, and must not stay a zombie. The
//! cloudflared here is a shell script that abandons a `sleep`, then becomes the stand-in.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{Rig, eventually};
use serde_json::json;
use test_support::workspace_bin;

const WITHIN: Duration = Duration::from_secs(20);

/// A cloudflared that, at every start, leaves behind an orphan living `orphan_s` seconds and
/// records its pid in `orphans.txt`, then runs as the stand-in.
fn abandoning_cloudflared(rig: &Rig, orphan_s: &str) -> PathBuf {
    let path = rig.path("cloudflared.sh");
    let script = format!(
        "#!/bin/sh\n\
         # The inner shell exits at once: its sleep is orphaned and reparented to the agent.\n\
         sh -c 'sleep {orphan_s} & echo $! >> \"{orphans}\"'\n\
         exec \"{stand_in}\" \"$@\"\n",
        orphans = rig.path("orphans.txt").display(),
        stand_in = workspace_bin("stand-in-cloudflared").display(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn orphans(rig: &Rig) -> Vec<u32> {
    std::fs::read_to_string(rig.path("orphans.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// `(state, ppid)` of a process, from `/proc/<pid>/stat`.
fn state_and_parent(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_owned();
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The zombies whose parent is `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| state_and_parent(*pid).is_some_and(|(s, ppid)| s == "Z" && ppid == parent))
        .collect()
}

fn with_binary(binary: &std::path::Path) -> [(&'static str, String); 1] {
    [("VM_AGENT_CLOUDFLARED__BINARY", binary.display().to_string())]
}

#[test]
fn orphans_cloudflared_leaves_behind_are_reaped() {
    let mut rig = Rig::new();
    rig.start_control();
    let binary = abandoning_cloudflared(&rig, "0.5");
    let agent = rig.start_agent(&rig.config(), &with_binary(&binary));
    eventually(&agent, "the tunnel up", WITHIN, || {
        rig.status()["tunnel"]["state"] == "ready"
    });
    let orphan = orphans(&rig)[0];
    // Zombies may exist for a moment between an exit and its SIGCHLD being handled.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let zombies = zombies_of(agent.pid());
        let orphan_left = state_and_parent(orphan);
        if zombies.is_empty() && orphan_left.is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orphan {orphan} is {orphan_left:?} (state, ppid); zombies of the agent (pid {}): {zombies:?}\n{}",
            agent.pid(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rig.status()["tunnel"]["state"],
        "ready",
        "the tunnel is untouched"
    );
    let (code, log) = agent.stop();
    assert!(code.success(), "{log}");
    assert!(
        log.contains(&format!("reaped orphan pid {orphan} (exit status 0)")),
        "{log}"
    );
}

/// The code of every restart line: "cloudflared exited with code N; restarting in ...".
fn exit_codes_logged(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|line| line.split("cloudflared exited with code ").nth(1))
        .filter_map(|rest| rest.split_once("; restarting in").map(|(code, _)| code))
        .collect()
}

#[test]
fn cloudflareds_exit_codes_still_reach_the_supervisor() {
    let mut rig = Rig::new();
    rig.start_control();
    // Every run's orphan dies about when cloudflared itself exits, so the SIGCHLDs coincide.
    let binary = abandoning_cloudflared(&rig, "0.1");
    rig.script(&json!({"exit_after_ms": 100, "exit_code": 3}));
    let agent = rig.start_agent(&rig.config(), &with_binary(&binary));
    eventually(&agent, "six exits", WITHIN, || {
        exit_codes_logged(&agent.log()).len() >= 6
    });
    assert_eq!(rig.status()["tunnel"]["last_exit"], 3);
    let (_, log) = agent.stop();
    let codes = exit_codes_logged(&log);
    assert!(
        codes.len() >= 6 && codes.iter().all(|code| *code == "3"),
        "every exit seen with cloudflared's own code: {codes:?}\n{log}"
    );
    assert!(log.contains("reaped orphan pid"), "{log}");
}
