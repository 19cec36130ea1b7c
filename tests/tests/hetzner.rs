//! `control serve` pointed at Hetzner by configuration — here the standalone Hetzner fake
//! (`provider-fakes hetzner --listen`), as README tells anyone to try it by hand: an Agent is
//! provisioned on it (its own firewall and volume, then its server), stopped and destroyed,
//! and the project is empty at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use e2e::{Api, eventually, start_control, write_control_config_with};
use serde_json::{Value, json};
use test_support::{Daemon, free_port, workspace_bin};

const TOKEN: &str = "fake-project-token";

async fn hetzner(fake: &str, path: &str) -> Value {
    test_support::http_client()
        .get(format!("{fake}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_agent_lives_and_dies_on_hetzner_by_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let fake_port = free_port();
    let mut command = Command::new(workspace_bin("provider-fakes"));
    command.args([
        "hetzner",
        "--listen",
        &format!("127.0.0.1:{fake_port}"),
        "--token",
        TOKEN,
        "--action-delay-ms",
        "50",
    ]);
    let fake_daemon = Daemon::start(command, fake_port);
    let fake = format!("http://127.0.0.1:{fake_port}/v1");
    let token_file = dir.path().join("hetzner-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = write_control_config_with(
        dir.path(),
        std::slice::from_ref(&url),
        None,
        &format!(
            "\n[providers]\ndefault = \"hetzner\"\n\n[hetzner]\ntoken_file = \"{}\"\nbase_url = \"{fake}\"\n",
            token_file.display()
        ),
    );
    let data = dir.path().join("data");
    let args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ];
    let control = start_control(&args, port);
    assert!(
        !control.daemon.log().contains(TOKEN),
        "the token reached the log"
    );
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    let image = op
        .post(
            "/api/images",
            json!({"version": "2026.12.0", "agent_version": "0.1.0",
                   "manifest_digest": format!("sha256:{}", "3".repeat(64)),
                   "refs": {"hetzner": "114690387"}, "env": {}}),
        )
        .await["id"]
        .clone();
    op.call(
        reqwest::Method::PUT,
        "/api/images/current",
        Some(json!({"image_id": image})),
    )
    .await;
    let account = op.post("/api/accounts", json!({"name": "Acme"})).await["id"].clone();
    let agent = op
        .post("/api/agents", json!({"name": "dev", "account_id": account}))
        .await;
    assert_eq!(agent["provider"], "hetzner", "{agent:#}");
    let id = agent["id"].as_str().unwrap().to_owned();
    let state = |want: &'static str| {
        let op = op.clone();
        let id = id.clone();
        async move {
            let view = op.get(&format!("/api/agents/{id}")).await;
            view["state"] == want && view["operation"].is_null()
        }
    };
    eventually("the Agent running", Duration::from_mins(1), || {
        state("running")
    })
    .await;
    let servers = hetzner(&fake, "/servers").await;
    assert_eq!(
        servers["servers"].as_array().unwrap().len(),
        1,
        "{servers:#}"
    );
    assert_eq!(servers["servers"][0]["status"], "running");
    let firewalls = hetzner(&fake, "/firewalls").await;
    assert_eq!(
        firewalls["firewalls"][0]["rules"],
        json!([]),
        "{firewalls:#}"
    );

    op.post(&format!("/api/agents/{id}/stop"), json!({})).await;
    eventually("the Agent paused", Duration::from_mins(2), || {
        state("paused")
    })
    .await;
    assert_eq!(
        hetzner(&fake, "/servers").await["servers"][0]["status"],
        "off"
    );

    op.call(reqwest::Method::DELETE, &format!("/api/agents/{id}"), None)
        .await;
    eventually("the Agent destroyed", Duration::from_mins(2), || {
        state("destroyed")
    })
    .await;
    for (path, key) in [
        ("/servers", "servers"),
        ("/firewalls", "firewalls"),
        ("/volumes", "volumes"),
    ] {
        let left = hetzner(&fake, path).await;
        assert_eq!(left[key], json!([]), "{path}: {left:#}");
    }
    let (status, log) = control.daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!log.contains(TOKEN), "the token reached the log");
    drop(fake_daemon);
}
