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
    let http = reqwest::Client::builder()
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
