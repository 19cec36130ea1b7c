//! Shared by the Cloudflare fake's integration tests: a bare client that sends what any of
//! Cloudflare's clients sends, no retries, no cleverness.

// Test code: a failed expectation is the test failing, so unwrap and expect are what we want.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use provider_fakes::cloudflare::{CloudflareFake, Options};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub use provider_fakes::cloudflare::assert_answers_enveloped;

pub async fn start() -> CloudflareFake {
    CloudflareFake::start(Options::default())
        .await
        .expect("fake starts")
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    pub account: String,
    pub zone: String,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The first error's code (0 when none).
    pub fn code(&self) -> u64 {
        self.body["errors"][0]["code"].as_u64().unwrap_or(0)
    }

    pub fn message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }

    pub fn result(&self) -> &Value {
        &self.body["result"]
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    pub fn new(fake: &CloudflareFake) -> Api {
        Api::with_token(fake, fake.token())
    }

    pub fn with_token(fake: &CloudflareFake, token: &str) -> Api {
        let http = test_support::http_client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Api {
            http,
            base: fake.url(),
            token: token.to_owned(),
            account: fake.account_id().to_owned(),
            zone: fake.zone_id().to_owned(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body))
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None)
            .await
            .unwrap()
    }

    /// `/accounts/{account}/cfd_tunnel` followed by `rest`.
    pub fn tunnels(&self, rest: &str) -> String {
        format!("/accounts/{}/cfd_tunnel{rest}", self.account)
    }

    /// `/zones/{zone}/dns_records` followed by `rest`.
    pub fn records(&self, rest: &str) -> String {
        format!("/zones/{}/dns_records{rest}", self.zone)
    }

    pub async fn create_tunnel(&self, name: &str) -> Reply {
        self.post(
            &self.tunnels(""),
            json!({"name": name, "config_src": "cloudflare"}),
        )
        .await
    }

    /// Creates a tunnel and returns its id.
    pub async fn tunnel(&self, name: &str) -> String {
        let reply = self.create_tunnel(name).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        reply.result()["id"].as_str().unwrap().to_owned()
    }

    pub async fn cname(&self, name: &str, tunnel: &str) -> Reply {
        self.post(
            &self.records(""),
            json!({"type": "CNAME", "name": name, "content": format!("{tunnel}.cfargotunnel.com"), "proxied": true}),
        )
        .await
    }
}
