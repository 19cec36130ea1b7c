//! The stand-ins behave like what they stand in for (and `cargo test` builds them because
//! this test exists).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use test_support::{Daemon, free_port};

const CLOUDFLARED: &str = env!("CARGO_BIN_EXE_stand-in-cloudflared");

#[test]
fn the_stand_in_cloudflared_refuses_bad_usage_and_bad_tokens_with_255() {
    let dir = tempfile::tempdir().unwrap();
    let no_token = Command::new(CLOUDFLARED)
        .args(["tunnel", "--no-autoupdate", "run"])
        .env_remove("TUNNEL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(255));
    let bad_flag = Command::new(CLOUDFLARED)
        .args(["tunnel", "--bogus", "run"])
        .output()
        .unwrap();
    assert_eq!(bad_flag.status.code(), Some(255));
    let token = dir.path().join("token");
    std::fs::write(&token, "invalid").unwrap();
    let invalid = Command::new(CLOUDFLARED)
        .args(["tunnel", "run", "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(invalid.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&invalid.stderr).contains("Provided Tunnel token is not valid")
    );
}

#[test]
fn the_stand_in_cloudflared_serves_ready_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("script.json"),
        r#"{"ready_after_ms": 300, "drain_ms": 100}"#,
    )
    .unwrap();
    let mut command = Command::new(CLOUDFLARED);
    command
        .args([
            "tunnel",
            "--no-autoupdate",
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "run",
        ])
        .env("TUNNEL_TOKEN", "a-valid-looking-token")
        .env(
            "STAND_IN_CLOUDFLARED_SCRIPT",
            dir.path().join("script.json"),
        );
    let cloudflared = Daemon::start(command, port);
    let get = |path: &str| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = test_support::http_client()
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let (status, body) = get("/ready");
    assert_eq!(status, 503, "not ready before ready_after_ms");
    assert!(body.contains(r#""readyConnections":0"#), "{body}");
    std::thread::sleep(Duration::from_millis(400));
    let (status, body) = get("/ready");
    assert_eq!(
        (status, body.contains(r#""readyConnections":4"#)),
        (200, true),
        "{body}"
    );
    assert!(
        get("/metrics")
            .1
            .contains("cloudflared_tunnel_ha_connections 4")
    );
    let (code, log) = cloudflared.stop();
    assert_eq!(code.code(), Some(0), "{log}");
    assert!(log.contains("Initiating graceful shutdown"), "{log}");
}
