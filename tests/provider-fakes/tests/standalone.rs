//! `provider-fakes hetzner --listen ADDR --token T` serves on its own, prints its URL and token, and
//! answers a client that uses them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn the_binary_serves_the_hetzner_fake_and_says_where() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_provider-fakes"))
        .args(["hetzner", "--listen", "127.0.0.1:0", "--token", "by-hand"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut token = None;
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        if let Some(u) = line.strip_prefix("url:") {
            url = Some(u.trim().to_owned());
        }
        if let Some(t) = line.strip_prefix("token:") {
            token = Some(t.trim().to_owned());
        }
    }
    let (url, token) = (url.expect("a url line"), token.expect("a token line"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{url}"
    );
    assert_eq!(token, "by-hand");
    let http = test_support::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let reply = http
        .get(format!("{url}/servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["ratelimit-limit"], "3600");
    let unauthorized = http.get(format!("{url}/servers")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_binary_serves_the_cloudflare_fake_and_says_where() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_provider-fakes"))
        .args([
            "cloudflare",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "by-hand",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = std::collections::BTreeMap::new();
    for _ in 0..6 {
        let line = lines.next().unwrap().unwrap();
        if let Some((key, value)) = line.split_once(':') {
            said.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    let url = said.get("url").expect("a url line").clone();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/client/v4"),
        "{url}"
    );
    assert_eq!(said.get("token").map(String::as_str), Some("by-hand"));
    let account = said.get("account_id").expect("an account line");
    let zone = said.get("zone_id").expect("a zone line");
    assert_eq!(
        said.get("zone_name").map(String::as_str),
        Some("agents.example.test")
    );
    let http = test_support::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let tunnels = format!("{url}/accounts/{account}/cfd_tunnel");
    let reply = http
        .get(&tunnels)
        .bearer_auth("by-hand")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(
        reply.headers()["ratelimit-policy"],
        "\"default\";q=1200;w=300"
    );
    let records = format!("{url}/zones/{zone}/dns_records");
    let reply = http
        .get(&records)
        .bearer_auth("by-hand")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let unauthorized = http.get(&tunnels).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_binary_serves_the_fly_fake_and_says_where() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_provider-fakes"))
        .args(["fly", "--listen", "127.0.0.1:0", "--token", "by-hand"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let line = lines.next().unwrap().unwrap();
        if let Some((key, value)) = line.split_once(':') {
            said.insert(key.trim().to_owned(), value.trim().to_owned());
        }
    }
    let url = said.get("url").expect("a url line").clone();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{url}"
    );
    assert_eq!(said.get("token").map(String::as_str), Some("by-hand"));
    let org = said.get("org_slug").expect("an org line");
    let http = test_support::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let apps = format!("{url}/apps?org_slug={org}");
    let reply = http.get(&apps).bearer_auth("by-hand").send().await.unwrap();
    assert_eq!(reply.status(), 200);
    assert!(reply.headers().contains_key("fly-request-id"));
    let unauthorized = http.get(&apps).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
}
