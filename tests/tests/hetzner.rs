//! `control serve` pointed at Hetzner and Cloudflare by configuration — here the standalone
//! fakes (`provider-fakes hetzner|cloudflare --listen`), as README tells anyone to try them by
//! hand, the Hetzner token from `HCLOUD_TOKEN` and Cloudflare's from a file: an Agent is
//! provisioned (its tunnel, route and DNS record; its firewall and volume; its server),
//! stopped and destroyed, and both are empty at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

use e2e::{Api, eventually, start_control_with, write_control_config_with};
use serde_json::{Value, json};
use test_support::{Daemon, free_port, workspace_bin};

const TOKEN: &str = "fake-project-token";
const CF_TOKEN: &str = "fake-cloudflare-token";
/// The standalone Cloudflare fake's account and zone (its defaults).
const CF_ACCOUNT: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CF_ZONE: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a9";
const CF_ZONE_NAME: &str = "agents.example.test";

async fn read(fake: &str, token: &str, path: &str) -> Value {
    test_support::http_client()
        .get(format!("{fake}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_agent_lives_and_dies_on_hetzner_and_cloudflare_by_configuration() {
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
        "--check-answers",
    ]);
    let fake_daemon = Daemon::start(command, fake_port);
    let fake = format!("http://127.0.0.1:{fake_port}/v1");
    let cf_port = free_port();
    let mut command = Command::new(workspace_bin("provider-fakes"));
    command.args([
        "cloudflare",
        "--listen",
        &format!("127.0.0.1:{cf_port}"),
        "--token",
        CF_TOKEN,
    ]);
    let cf_daemon = Daemon::start(command, cf_port);
    let cf = format!("http://127.0.0.1:{cf_port}/client/v4");
    let cf_token_file = dir.path().join("cloudflare-token");
    std::fs::write(&cf_token_file, CF_TOKEN).unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = write_control_config_with(
        dir.path(),
        std::slice::from_ref(&url),
        None,
        &format!("domain = \"{CF_ZONE_NAME}\"\ncontrol_url = \"{url}\""),
        &format!(
            "\n[providers]\ndefault = \"hetzner\"\ntunnels = \"cloudflare\"\n\n\
             [hetzner]\nbase_url = \"{fake}\"\n\n\
             [cloudflare]\ntoken_file = \"{}\"\nbase_url = \"{cf}\"\n\
             account_id = \"{CF_ACCOUNT}\"\nzone_id = \"{CF_ZONE}\"\n",
            cf_token_file.display()
        ),
    );
    let data = dir.path().join("data");
    let args = e2e::control_args(&config, &data, None);
    // The Hetzner token from the environment, as `hcloud` reads it; Cloudflare's from a file.
    let control = start_control_with(&args, port, &[("HCLOUD_TOKEN", TOKEN)]);
    for secret in [TOKEN, CF_TOKEN] {
        assert!(
            !control.daemon.log().contains(secret),
            "a token reached the log"
        );
    }
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&url, operator.trim());
    op.current_release("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let account = op.account("Acme").await;
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
    let servers = read(&fake, TOKEN, "/servers").await;
    assert_eq!(
        servers["servers"].as_array().unwrap().len(),
        1,
        "{servers:#}"
    );
    assert_eq!(servers["servers"][0]["status"], "running");
    let firewalls = read(&fake, TOKEN, "/firewalls").await;
    assert_eq!(
        firewalls["firewalls"][0]["rules"],
        json!([]),
        "{firewalls:#}"
    );
    let tunnels_path = format!("/accounts/{CF_ACCOUNT}/cfd_tunnel?is_deleted=false");
    let records_path = format!("/zones/{CF_ZONE}/dns_records");
    let tunnels = read(&cf, CF_TOKEN, &tunnels_path).await;
    assert_eq!(
        tunnels["result"].as_array().unwrap().len(),
        1,
        "{tunnels:#}"
    );
    let records = read(&cf, CF_TOKEN, &records_path).await;
    let hostname = format!(
        "{}.{CF_ZONE_NAME}",
        id.replace('_', "-").to_ascii_lowercase()
    );
    assert_eq!(
        records["result"][0]["name"],
        hostname.as_str(),
        "{records:#}"
    );

    op.post(&format!("/api/agents/{id}/stop"), json!({})).await;
    eventually("the Agent paused", Duration::from_mins(2), || {
        state("paused")
    })
    .await;
    assert_eq!(
        read(&fake, TOKEN, "/servers").await["servers"][0]["status"],
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
        let left = read(&fake, TOKEN, path).await;
        assert_eq!(left[key], json!([]), "{path}: {left:#}");
    }
    let tunnels = read(&cf, CF_TOKEN, &tunnels_path).await;
    assert_eq!(tunnels["result"], json!([]), "{tunnels:#}");
    let records = read(&cf, CF_TOKEN, &records_path).await;
    assert_eq!(records["result"], json!([]), "{records:#}");
    let (status, log) = control.daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains(CF_TOKEN),
        "a token reached the log"
    );
    // Every answer the standalone Hetzner fake gave control matches Hetzner's schemas.
    let (status, log) = fake_daemon.stop();
    assert!(
        status.success() && log.contains("answers match Hetzner's OpenAPI schemas"),
        "{log}"
    );
    drop(cf_daemon);
}
