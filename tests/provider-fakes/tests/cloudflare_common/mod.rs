//! Shared by the Cloudflare fake's integration tests: a bare client that sends what any of
//! Cloudflare's clients sends, no retries, no cleverness.

// Test code: a failed expectation is the test failing, so unwrap and expect are what we want.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::ops::Deref;

use provider_fakes::cloudflare::{CloudflareFake, Options};
use serde_json::{Value, json};

#[path = "../http/mod.rs"]
mod http;

pub use http::Reply;

pub use provider_fakes::cloudflare::assert_answers_enveloped;

pub async fn start() -> CloudflareFake {
    CloudflareFake::start(Options::default())
        .await
        .expect("fake starts")
}

pub struct Api {
    client: http::Client,
    pub account: String,
    pub zone: String,
}

impl Deref for Api {
    type Target = http::Client;

    fn deref(&self) -> &http::Client {
        &self.client
    }
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
}

impl Api {
    pub fn new(fake: &CloudflareFake) -> Api {
        Api::with_token(fake, fake.token())
    }

    pub fn with_token(fake: &CloudflareFake, token: &str) -> Api {
        Api {
            client: http::Client::new(fake.url(), token),
            account: fake.account_id().to_owned(),
            zone: fake.zone_id().to_owned(),
        }
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
