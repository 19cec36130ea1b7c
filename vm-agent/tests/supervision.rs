//! cloudflared supervision, observed from outside: what the stand-in cloudflared recorded,
//! what the agent logged and what its status socket says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{Rig, TUNNEL_TOKEN, eventually};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);

/// `(wait ms, attempt, ceiling ms)` of every "restarting in" line of the log.
fn restarts_logged(log: &str) -> Vec<(u64, u32, u64)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.split("restarting in ").nth(1)?;
            let wait = rest.split(' ').next()?.parse().ok()?;
            let attempt = rest
                .split("(attempt ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let ceiling = rest
                .split("ceiling ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((wait, attempt, ceiling))
        })
        .collect()
}

#[test]
fn a_crashed_cloudflared_is_restarted() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"exit_after_ms": 300, "exit_code": 1}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "a restart", WITHIN, || rig.starts().len() >= 2);
    let status = rig.status();
    assert!(status["tunnel"]["restarts"].as_u64().unwrap() >= 1);
    assert_eq!(status["tunnel"]["last_exit"], 1);
    let (code, log) = agent.stop();
    assert!(code.success(), "{log}");
    assert!(
        log.contains("cloudflared exited with code 1; restarting in"),
        "{log}"
    );
    assert!(
        log.contains("message_id=a41f5e2c7b9d4c03b6e8f1a2d3c4b5e6"),
        "the restart carries its MESSAGE_ID:\n{log}"
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"exit_after_ms": 0, "exit_code": 1}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "seven restarts", WITHIN, || {
        restarts_logged(&agent.log()).len() >= 7
    });
    let (_, log) = agent.stop();
    let restarts = restarts_logged(&log);
    let ceilings: Vec<u64> = restarts.iter().take(7).map(|r| r.2).collect();
    assert_eq!(
        ceilings,
        [100, 200, 400, 800, 800, 800, 800],
        "doubling from 100 ms, capped at 800 ms"
    );
    for (wait, attempt, ceiling) in &restarts {
        assert!(
            wait <= ceiling,
            "attempt {attempt} waited {wait} ms over its ceiling {ceiling} ms"
        );
    }
    // The starts really are spaced by the drawn waits.
    let starts: Vec<u64> = rig
        .starts()
        .iter()
        .map(|s| s["at_ms"].as_u64().unwrap())
        .collect();
    for (pair, (wait, _, _)) in starts.windows(2).zip(&restarts) {
        assert!(
            pair[1] - pair[0] + 5 >= *wait,
            "started again {} ms after, before its {wait} ms wait",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn backoff_starts_over_only_after_a_stable_ready_period() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"exit_after_ms": 150, "exit_code": 1}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "three restarts", WITHIN, || {
        restarts_logged(&agent.log()).len() >= 3
    });
    // Now it stays up: ready, and stable after a second.
    rig.script(&json!({}));
    eventually(&agent, "the backoff reset", WITHIN, || {
        agent.log().contains("restart backoff reset")
    });
    let before = restarts_logged(&agent.log()).len();
    assert!(
        restarts_logged(&agent.log()).iter().any(|r| r.2 >= 400),
        "the backoff had grown"
    );
    // The next crash starts from the initial delay again.
    rig.script(&json!({"exit_after_ms": 0, "exit_code": 1}));
    eventually(&agent, "a restart after the reset", WITHIN, || {
        restarts_logged(&agent.log()).len() > before
    });
    let after = restarts_logged(&agent.log())[before];
    assert_eq!(
        (after.1, after.2),
        (1, 100),
        "attempt 1 with the initial ceiling"
    );
    agent.stop();
}

#[test]
fn a_crash_loop_is_flagged_logged_and_reported() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"exit_after_ms": 0, "exit_code": 2}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the crash-loop flag", WITHIN, || {
        rig.status()["tunnel"]["crash_loop"] == true
    });
    eventually(&agent, "a heartbeat reporting it", WITHIN, || {
        rig.heartbeats()
            .iter()
            .any(|h| h["cloudflared"]["crash_loop"] == true)
    });
    let (_, log) = agent.stop();
    let line = log
        .lines()
        .find(|l| l.contains("crash-looping"))
        .expect("a crash-loop line");
    assert!(
        line.starts_with(|c: char| c.is_ascii_digit()) && line.contains("ERROR"),
        "{line}"
    );
    assert!(
        line.contains("message_id=f0e1d2c3b4a5468799aabbccddeeff01"),
        "{line}"
    );
}

#[test]
fn exit_255_is_not_retried_in_a_hot_loop() {
    let mut rig = Rig::new();
    rig.start_control();
    std::fs::write(rig.path("tunnel-token"), "invalid").unwrap();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the failed state", WITHIN, || {
        rig.status()["tunnel"]["state"] == "failed"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        rig.starts().len(),
        1,
        "one try, then a long wait: {:?}",
        rig.launches()
    );
    let status = rig.status();
    assert_eq!(status["tunnel"]["last_exit"], 255);
    assert!(status["tunnel"]["next_start_in_ms"].as_u64().unwrap() >= 30_000);
    let (_, log) = agent.stop();
    assert!(
        log.contains("message_id=5b8e2a9c4d1f4e7a8b3c6d9e0f1a2b3c")
            && log.contains("invalid tunnel token"),
        "{log}"
    );
}

#[test]
fn a_prolonged_loss_of_connections_restarts_it() {
    let mut rig = Rig::new();
    rig.start_control();
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the tunnel up", WITHIN, || {
        rig.status()["tunnel"]["state"] == "ready"
    });
    assert_eq!(rig.status()["tunnel"]["ready_connections"], 4);
    let first = rig.starts()[0]["pid"].clone();
    rig.script(&json!({"connections": 0}));
    eventually(&agent, "the unready state", WITHIN, || {
        rig.status()["tunnel"]["state"] == "unready"
    });
    eventually(&agent, "a second start", WITHIN, || rig.starts().len() >= 2);
    let terminated = rig
        .launches()
        .iter()
        .any(|e| e["event"] == "signal" && e["pid"] == first && e["signal"] == "TERM");
    assert!(
        terminated,
        "the first cloudflared got SIGTERM: {:?}",
        rig.launches()
    );
    let (_, log) = agent.stop();
    assert!(
        log.contains("tunnel down: cloudflared has no ready connection"),
        "{log}"
    );
    assert!(
        log.contains("message_id=8d2e4f6a1b3c4d5e9f0a7b8c6d5e4f31"),
        "{log}"
    );
    assert!(
        log.contains("had no ready connection for 1 s; stopped it"),
        "{log}"
    );
}

#[test]
fn stopping_the_agent_drains_cloudflared() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"drain_ms": 300}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the tunnel up", WITHIN, || {
        rig.status()["tunnel"]["state"] == "ready"
    });
    let started = Instant::now();
    let (code, log) = agent.stop();
    assert!(code.success(), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = rig.launches();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "signal" && e["signal"] == "TERM"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "exit" && e["code"] == 0),
        "it drained and exited 0: {events:?}"
    );
    assert!(
        !rig.path("run/status.sock").exists(),
        "the status socket is removed"
    );
}

#[test]
fn a_cloudflared_ignoring_sigterm_is_killed_after_the_grace_period() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"ignore_sigterm": true}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the tunnel up", WITHIN, || {
        rig.status()["tunnel"]["state"] == "ready"
    });
    let pid = rig.starts()[0]["pid"].as_u64().unwrap();
    let started = Instant::now();
    let (code, log) = agent.stop();
    let took = started.elapsed();
    assert!(code.success(), "{log}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "SIGKILL after the 2 s grace, took {took:?}"
    );
    assert!(
        log.contains("did not stop within 2 s of SIGTERM; killing it"),
        "{log}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "cloudflared is gone"
    );
}

/// Every process's command line, for the token check.
fn all_command_lines() -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            all.push_str(&String::from_utf8_lossy(&bytes).replace('\0', " "));
            all.push('\n');
        }
    }
    all
}

#[test]
fn the_token_is_in_no_command_line_and_no_log() {
    for from_env in [false, true] {
        let mut rig = Rig::new();
        rig.start_control();
        rig.script(&json!({"print_token": true}));
        let config = if from_env {
            // No token file: the agent takes TUNNEL_TOKEN and passes it in cloudflared's environment.
            let path = rig.config();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text
                .lines()
                .filter(|l| !l.starts_with("token_file"))
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&path, text).unwrap();
            path
        } else {
            rig.config()
        };
        let env = if from_env {
            vec![("TUNNEL_TOKEN", TUNNEL_TOKEN.to_owned())]
        } else {
            Vec::new()
        };
        let agent = rig.start_agent(&config, &env);
        eventually(&agent, "the tunnel up", WITHIN, || {
            rig.status()["tunnel"]["state"] == "ready"
        });
        assert!(
            !all_command_lines().contains(TUNNEL_TOKEN),
            "the token is in a command line"
        );
        let start = &rig.starts()[0];
        assert_eq!(start["token_source"], if from_env { "env" } else { "file" });
        let args = start["args"].to_string();
        assert!(
            args.contains("--no-autoupdate")
                && args.contains(&format!("127.0.0.1:{}", rig.metrics_port)),
            "{args}"
        );
        eventually(&agent, "cloudflared's output in the log", WITHIN, || {
            agent.log().contains("Using token [redacted]")
        });
        let (_, log) = agent.stop();
        assert!(!log.contains(TUNNEL_TOKEN), "the token reached the log");
        let control = std::fs::read_to_string(rig.path("control.jsonl")).unwrap_or_default();
        assert!(!control.contains(TUNNEL_TOKEN), "the token reached control");
    }
}

#[test]
fn cloudflared_does_not_inherit_the_agents_systemd_sockets() {
    let mut rig = Rig::new();
    rig.start_control();
    let notify = rig.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET", notify.display().to_string()),
        ("WATCHDOG_USEC", "1000000".to_owned()),
    ];
    let agent = rig.start_agent(&rig.config(), &env);
    eventually(&agent, "cloudflared started", WITHIN, || {
        !rig.starts().is_empty()
    });
    let start = &rig.starts()[0];
    assert_eq!(
        (start["notify_socket"].clone(), start["watchdog"].clone()),
        (json!(false), json!(false))
    );

    // The agent itself speaks to "systemd": READY=1 once running, then WATCHDOG=1 pings.
    let mut messages = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket
            .recv(&mut buffer)
            .expect("a notification within 10 s");
        messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert!(
        messages[0].contains("READY=1") && messages[0].contains("STATUS="),
        "{messages:?}"
    );
    let (_, _) = agent.stop();
    let mut last = String::new();
    while let Ok(n) = socket.recv(&mut buffer) {
        last = String::from_utf8_lossy(&buffer[..n]).into_owned();
        if last.contains("STOPPING=1") {
            break;
        }
    }
    assert!(last.contains("STOPPING=1"), "{last}");
}

#[test]
fn cloudflared_output_reaches_the_log_rate_limited() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"stderr_lines_per_s": 200}));
    let env = [(
        "VM_AGENT_CLOUDFLARED__LOG_LINES_PER_MINUTE",
        "30".to_owned(),
    )];
    let agent = rig.start_agent(&rig.config(), &env);
    eventually(&agent, "dropped lines reported", WITHIN, || {
        agent
            .log()
            .contains("lines of cloudflared output were dropped")
    });
    std::thread::sleep(Duration::from_secs(2));
    let (_, log) = agent.stop();
    let forwarded = log
        .lines()
        .filter(|l| l.contains("[cloudflared]") && l.contains("chatter line"))
        .count();
    assert!(
        (1..=40).contains(&forwarded),
        "{forwarded} of ~600 chatter lines forwarded: a burst of 30 and a trickle"
    );
    let line = log.lines().find(|l| l.contains("chatter line")).unwrap();
    assert!(
        line.contains("INFO") && line.contains("[cloudflared]"),
        "cloudflared's lines keep their level: {line}"
    );
}

#[test]
fn sigint_stops_the_agent_like_sigterm() {
    let mut rig = Rig::new();
    rig.start_control();
    rig.script(&json!({"drain_ms": 200}));
    let agent = rig.start_agent(&rig.config(), &[]);
    eventually(&agent, "the tunnel up", WITHIN, || {
        rig.status()["tunnel"]["state"] == "ready"
    });
    agent.signal("-INT");
    let (code, log) = agent.wait_exit(Duration::from_secs(10));
    assert!(code.success(), "{log}");
    assert!(
        rig.launches()
            .iter()
            .any(|e| e["event"] == "exit" && e["code"] == 0),
        "cloudflared drained"
    );
}
