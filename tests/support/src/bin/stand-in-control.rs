//! A stand-in for control's agent API, for vm-agent's tests and its footprint benchmark.
//!
//! `stand-in-control --listen 127.0.0.1:0 --record FILE --bootstrap TOKEN … [--interval-s N]`
//! prints `listening on ADDR`, then serves `POST /api/agent/v1/register` and
//! `POST /api/agent/v1/heartbeat` with control-api's wire types. Each bootstrap token works
//! once; the credential it buys is checked on every heartbeat. Every request is appended to
//! the record file as a JSON line, and the file is also its memory: started again on the same
//! record, it still refuses used bootstrap tokens and still knows the credentials it issued.

#![allow(clippy::disallowed_methods, clippy::expect_used)] // a test program

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use control_api::agent::{
    HEARTBEAT_PATH, Heartbeat, HeartbeatAck, REGISTER_PATH, RegisterRequest, RegisterResponse,
};
use serde_json::json;
use sha2::{Digest, Sha256};

struct Control {
    record: PathBuf,
    bootstraps: BTreeSet<String>,
    used: Mutex<BTreeSet<String>>,
    interval_s: u32,
}

fn credential_for(bootstrap: &str) -> String {
    format!("cred_{}", hex::encode(Sha256::digest(bootstrap.as_bytes())))
}

fn fingerprint(bootstrap: &str) -> String {
    hex::encode(&Sha256::digest(format!("fingerprint:{bootstrap}").as_bytes())[..8])
}

impl Control {
    fn write(&self, event: &serde_json::Value) {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
        {
            let _ = writeln!(file, "{event}");
        }
    }
}

async fn register(
    State(control): State<Arc<Control>>,
    Json(request): Json<RegisterRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    let token = request.bootstrap_token.clone();
    let fresh = control.bootstraps.contains(&token)
        && control
            .used
            .lock()
            .expect("lock")
            .insert(fingerprint(&token));
    control.write(&json!({
        "event": "register",
        "ok": fresh,
        "agent_id": request.agent_id,
        "bootstrap": fingerprint(&token),
        "boot_id": request.boot_id,
    }));
    if !fresh {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"title": "bootstrap token unknown or already used"})),
        );
    }
    let answer = RegisterResponse {
        agent_id: request.agent_id,
        credential: credential_for(&token),
        heartbeat_interval_s: control.interval_s,
    };
    (
        StatusCode::OK,
        Json(serde_json::to_value(answer).expect("encoding")),
    )
}

async fn heartbeat(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Json(beat): Json<Heartbeat>,
) -> (StatusCode, Json<serde_json::Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(control_api::bearer_token)
        .unwrap_or_default();
    let known = control
        .bootstraps
        .iter()
        .any(|b| credential_for(b) == bearer);
    control.write(&json!({"event": "heartbeat", "ok": known, "heartbeat": beat}));
    if !known {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"title": "unknown credential"})),
        );
    }
    let ack = HeartbeatAck {
        heartbeat_interval_s: control.interval_s,
    };
    (
        StatusCode::OK,
        Json(serde_json::to_value(ack).expect("encoding")),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut record = PathBuf::from("stand-in-control.jsonl");
    let mut bootstraps = BTreeSet::new();
    let mut interval_s = 30;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value,
            "--record" => record = PathBuf::from(value),
            "--bootstrap" => {
                bootstraps.insert(value);
            }
            "--interval-s" => interval_s = value.parse().expect("--interval-s takes seconds"),
            other => panic!("unknown flag {other}"),
        }
    }
    // The record remembers which bootstrap tokens were used before a restart.
    let used = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["event"] == "register" && event["ok"] == true)
        .filter_map(|event| event["bootstrap"].as_str().map(str::to_owned))
        .collect();
    let control = Arc::new(Control {
        record,
        bootstraps,
        used: Mutex::new(used),
        interval_s,
    });
    let app = Router::new()
        .route(REGISTER_PATH, post(register))
        .route(HEARTBEAT_PATH, post(heartbeat))
        .with_state(control);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .expect("binding");
    println!("listening on {}", listener.local_addr().expect("address"));
    let _ = std::io::stdout().flush();
    axum::serve(listener, app).await.expect("serving");
}
