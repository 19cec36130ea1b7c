//! Shared by the fake's integration tests: a small HTTP client and polling. The check of answers
//! against Hetzner's OpenAPI schemas is the library's (`hetzner::schema`), so control's tests can
//! use it too.

// Test code: a failed expectation is the test failing, so unwrap and expect are what we want.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::ops::Deref;
use std::time::Duration;

use provider_fakes::hetzner::{HetznerFake, Options};
use serde_json::{Value, json};

#[path = "../http/mod.rs"]
mod http;

pub use http::Reply;

pub async fn start(action_delay: Duration) -> HetznerFake {
    HetznerFake::start(Options {
        action_delay,
        ..Options::default()
    })
    .await
    .expect("fake starts")
}

/// A bare client: what any of Hetzner's clients sends, no retries, no cleverness.
pub struct Api {
    client: http::Client,
}

impl Deref for Api {
    type Target = http::Client;

    fn deref(&self) -> &http::Client {
        &self.client
    }
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub fn new(fake: &HetznerFake) -> Api {
        Api::with_token(fake, fake.token())
    }

    pub fn with_token(fake: &HetznerFake, token: &str) -> Api {
        Api {
            client: http::Client::new(fake.url(), token),
        }
    }

    /// Polls an action until it leaves `running` (at most 5 s).
    pub async fn wait_action(&self, id: u64) -> Value {
        for _ in 0..250 {
            let reply = self.get(&format!("/actions/{id}")).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if reply.body["action"]["status"] != "running" {
                return reply.body["action"].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("action {id} still running after 5 s");
    }

    /// Polls a server until it has `status` (at most 5 s).
    pub async fn wait_status(&self, id: u64, status: &str) {
        for _ in 0..250 {
            let reply = self.get(&format!("/servers/{id}")).await;
            if reply.body["server"]["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server {id} never reached {status}");
    }

    pub async fn create_server(&self, name: &str, labels: Value) -> Reply {
        self.post("/servers", json!({"name": name, "server_type": "cx22", "image": "debian-12", "location": "fsn1", "labels": labels})).await
    }
}

pub fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

pub use provider_fakes::hetzner::schema::assert_answers_match_spec;
