//! The API contract at its edges: a body documented as an object is an object (nested ones
//! too), an integer stays in its documented range, a date's year is 0000 to 9999, and a
//! method a path does not have is answered 405 before anything else. Each bad request gets a
//! problem naming the field and changes nothing. In process, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use axum::http::Method;
use common::Harness;
use serde_json::{Value, json};
use test_support::{TestDb, dual_backend_tests};

dual_backend_tests!(
    bodies_that_are_not_objects_are_refused_and_change_nothing,
    integers_outside_their_range_are_refused_and_change_nothing,
    years_outside_0000_to_9999_are_refused_and_change_nothing,
    a_method_a_path_lacks_is_answered_405_before_its_key_is_claimed,
);

fn beat(agent_id: &str, sequence: u64) -> Value {
    json!({
        "agent_id": agent_id,
        "boot_id": "boot-1",
        "sequence": sequence,
        "agent_version": "0.1.0",
        "image_version": "2026.11.0",
        "agent_uptime_s": 5,
        "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0, "crash_loop": false,
                        "last_exit": null},
        "slice": {"state": "mounted", "free_bytes": 1000, "total_bytes": 2000},
        "host": {"cpus": 2, "load_centi": [1, 2, 3], "memory_total_bytes": 4, "memory_available_bytes": 2,
                 "root_free_bytes": 9, "uptime_s": 100}
    })
}

/// A harness with a current release, an account token, an Agent whose vm-agent registered
/// (and reported once) and a provisioned Plain VM: `(harness, token, agent, credential, vm)`.
async fn world(db: TestDb) -> (Harness, String, String, String, String) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev-box").await;
    let bootstrap = h.local.vm(&agent).unwrap().bootstrap_token.unwrap();
    let registered = h
        .call(
            Method::POST,
            "/api/agent/v1/register",
            None,
            Some(
                json!({"agent_id": agent, "bootstrap_token": bootstrap, "boot_id": "boot-1",
                        "agent_version": "0.1.0", "image_version": "2026.11.0"}),
            ),
        )
        .await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    let credential = registered.body["credential"].as_str().unwrap().to_owned();
    let first = heartbeat(&h, &credential, &beat(&agent, 1)).await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    let vm = h
        .post(
            "/api/plain-vms",
            &token,
            json!({"name": "web", "one_time_password": true}),
        )
        .await;
    assert_eq!(vm.status, 202, "{:#}", vm.body);
    h.run_jobs().await;
    let vm = vm.body["id"].as_str().unwrap().to_owned();
    h.app.ingest.flush(false).await.unwrap();
    (h, token, agent, credential, vm)
}

async fn heartbeat(h: &Harness, credential: &str, body: &Value) -> common::Reply {
    h.call(
        Method::POST,
        "/api/agent/v1/heartbeat",
        Some(credential),
        Some(body.clone()),
    )
    .await
}

/// Sends each `(what, method, path, bearer, body)` and checks it is refused with 422 naming
/// `field`, leaving the database as it was.
async fn all_refused(h: &Harness, cases: Vec<(&str, Method, String, &str, Value, &str)>) {
    let before = h.snapshot().await;
    for (what, method, path, bearer, body, field) in cases {
        let reply = h.call(method, &path, Some(bearer), Some(body)).await;
        assert_eq!(reply.status, 422, "{what}: {:#}", reply.body);
        reply.problem(422, Some(field));
        h.app.ingest.flush(false).await.unwrap();
        assert_eq!(h.snapshot().await, before, "{what} changed the database");
    }
}

async fn bodies_that_are_not_objects_are_refused_and_change_nothing(db: TestDb) {
    let (h, token, agent, credential, vm) = world(db).await;
    let (_, other_account) = {
        let account = h
            .post("/api/accounts", &h.operator, json!({"name": "Other"}))
            .await;
        (
            account.status,
            account.body["id"].as_str().unwrap().to_owned(),
        )
    };
    let op = h.operator.clone();
    let mut nested_beat = beat(&agent, 2);
    nested_beat["cloudflared"] = json!(["ready", 4, 0, false]);
    let mut nested_clone = beat(&agent, 2);
    nested_clone["clone"] = json!([agent, "copying"]);
    let cases = vec![
        // The transfer endpoint took `["acc_…"]` as `{"to_account": "acc_…"}`.
        (
            "a transfer as an array",
            Method::POST,
            format!("/api/agents/{agent}/transfer"),
            op.as_str(),
            json!([other_account]),
            "body",
        ),
        (
            "a Plain VM transfer as an array",
            Method::POST,
            format!("/api/plain-vms/{vm}/transfer"),
            op.as_str(),
            json!([other_account]),
            "body",
        ),
        (
            "a provisioning as an array",
            Method::POST,
            "/api/agents".to_owned(),
            token.as_str(),
            json!(["new-box"]),
            "body",
        ),
        (
            "a provisioning as a string",
            Method::POST,
            "/api/agents".to_owned(),
            token.as_str(),
            json!("new-box"),
            "body",
        ),
        (
            "a provisioning as null",
            Method::POST,
            "/api/agents".to_owned(),
            token.as_str(),
            Value::Null,
            "body",
        ),
        (
            "an account as an array",
            Method::POST,
            "/api/accounts".to_owned(),
            op.as_str(),
            json!(["Acme 2"]),
            "body",
        ),
        (
            "a token as an array",
            Method::POST,
            format!("/api/accounts/{other_account}/tokens"),
            op.as_str(),
            json!([]),
            "body",
        ),
        (
            "a clone as an array",
            Method::POST,
            format!("/api/agents/{agent}/clone"),
            token.as_str(),
            json!(["copy"]),
            "body",
        ),
        (
            "a Vault key as an array",
            Method::POST,
            "/api/vault/keys".to_owned(),
            token.as_str(),
            json!(["laptop", "ssh-ed25519 AAAA"]),
            "body",
        ),
        (
            "a Plain VM as an array",
            Method::POST,
            "/api/plain-vms".to_owned(),
            token.as_str(),
            json!(["db", null, null, null, null, [], true]),
            "body",
        ),
        (
            "a current image as an array",
            Method::PUT,
            "/api/images/current".to_owned(),
            op.as_str(),
            json!(["img_01JDQ6V9X8RTS5N0Z5G8K2M4PQ"]),
            "body",
        ),
        (
            "a firewall as an array",
            Method::PUT,
            format!("/api/plain-vms/{vm}/firewall"),
            token.as_str(),
            json!([[]]),
            "body",
        ),
        (
            "a firewall rule as an array",
            Method::PUT,
            format!("/api/plain-vms/{vm}/firewall"),
            token.as_str(),
            json!({"rules": [["in", "tcp", "22", ["0.0.0.0/0"], [], null]]}),
            "rules[0]",
        ),
        (
            "image refs as an array",
            Method::POST,
            "/api/images".to_owned(),
            op.as_str(),
            json!({"version": "v2", "agent_version": "1", "manifest_digest": common::DIGEST, "refs": [["local", "x"]]}),
            "refs",
        ),
        (
            "a heartbeat as an array",
            Method::POST,
            "/api/agent/v1/heartbeat".to_owned(),
            credential.as_str(),
            json!(["boot-1", 2]),
            "body",
        ),
        (
            "a heartbeat's tunnel as an array",
            Method::POST,
            "/api/agent/v1/heartbeat".to_owned(),
            credential.as_str(),
            nested_beat,
            "cloudflared",
        ),
        (
            "a heartbeat's clone as an array",
            Method::POST,
            "/api/agent/v1/heartbeat".to_owned(),
            credential.as_str(),
            nested_clone,
            "clone",
        ),
    ];
    all_refused(&h, cases).await;
    let registration = h
        .call(
            Method::POST,
            "/api/agent/v1/register",
            None,
            Some(json!([agent, "token", "boot-1", "0.1.0", "2026.11.0"])),
        )
        .await;
    registration.problem(422, Some("body"));
    assert_eq!(
        registration.body["errors"][0]["message"],
        "must be a JSON object"
    );
}

async fn integers_outside_their_range_are_refused_and_change_nothing(db: TestDb) {
    let (h, token, agent, credential, _) = world(db).await;
    let beat_with = |pointer: &str, value: Value| {
        let mut body = beat(&agent, 2);
        *body.pointer_mut(pointer).unwrap() = value;
        body
    };
    let hb = "/api/agent/v1/heartbeat".to_owned();
    let cred = credential.as_str();
    let cases = vec![
        (
            "a sequence of 2^64 - 1",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/sequence", json!(u64::MAX)),
            "sequence",
        ),
        (
            "a sequence of 2^63",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/sequence", json!(1_u64 << 63)),
            "sequence",
        ),
        (
            "a sequence of 0",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/sequence", json!(0)),
            "sequence",
        ),
        (
            "a negative sequence",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/sequence", json!(-1)),
            "sequence",
        ),
        (
            "an uptime of 2^64 - 1",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/agent_uptime_s", json!(u64::MAX)),
            "agent_uptime_s",
        ),
        (
            "free bytes of 2^64 - 1",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/slice/free_bytes", json!(u64::MAX)),
            "slice.free_bytes",
        ),
        (
            "memory of 2^63",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/host/memory_total_bytes", json!(1_u64 << 63)),
            "host.memory_total_bytes",
        ),
        (
            "a negative load",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/host/load_centi/2", json!(-5)),
            "host.load_centi[2]",
        ),
        (
            "an exit status of 300",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/cloudflared/last_exit", json!(300)),
            "cloudflared.last_exit",
        ),
        (
            "2^32 restarts",
            Method::POST,
            hb.clone(),
            cred,
            beat_with("/cloudflared/restarts", json!(1_u64 << 32)),
            "cloudflared.restarts",
        ),
    ];
    all_refused(&h, cases).await;

    let sequence = h
        .call(
            Method::POST,
            "/api/agent/v1/heartbeat",
            Some(cred),
            Some(beat_with("/sequence", json!(u64::MAX))),
        )
        .await;
    assert_eq!(
        sequence.body["errors"][0]["message"],
        "must be from 1 to 9223372036854775807, got 18446744073709551615"
    );

    let before = h.snapshot().await;
    for (path, field) in [
        ("/api/agents?limit=201", "limit"),
        ("/api/agents?limit=0", "limit"),
        ("/api/agents?limit=-1", "limit"),
        ("/api/agents?limit=18446744073709551615", "limit"),
        ("/api/plain-vms?limit=201", "limit"),
        ("/api/audit?limit=501", "limit"),
        ("/api/audit?cursor=9223372036854775808", "cursor"),
        ("/api/audit?cursor=1234567890123456789", "cursor"),
        ("/api/audit?cursor=%2B5", "cursor"),
    ] {
        h.get(path, &token).await.problem(422, Some(field));
    }
    assert_eq!(
        h.snapshot().await,
        before,
        "a refused query changed the database"
    );

    // The largest sequence control stores is taken.
    let largest = heartbeat(&h, cred, &beat_with("/sequence", json!(i64::MAX))).await;
    assert_eq!(largest.status, 200, "{:#}", largest.body);
}

async fn years_outside_0000_to_9999_are_refused_and_change_nothing(db: TestDb) {
    let (h, token, agent, credential, _) = world(db).await;
    let mut since = beat(&agent, 2);
    since["cloudflared"]["since"] = json!("9999-12-31T23:30:00-01:00");
    let mut before_year_0 = beat(&agent, 2);
    before_year_0["cloudflared"]["since"] = json!("0000-01-01T00:30:00+01:00");
    let hb = "/api/agent/v1/heartbeat".to_owned();
    let cases = vec![
        (
            "an instant in year 10000",
            Method::POST,
            hb.clone(),
            credential.as_str(),
            since,
            "cloudflared.since",
        ),
        (
            "an instant in year -1",
            Method::POST,
            hb,
            credential.as_str(),
            before_year_0,
            "cloudflared.since",
        ),
    ];
    all_refused(&h, cases).await;

    let before = h.snapshot().await;
    for (query, field) in [
        ("from=10000-01-01&to=10000-01-02", "from"),
        ("from=%2B10000-01-01&to=2026-01-01", "from"),
        ("from=-0001-12-31&to=0000-01-01", "from"),
        ("from=9999-12-31&to=%2B10000-01-01", "to"),
        ("from=2026-01-01&to=%2B2026-01-02", "to"),
    ] {
        let reply = h.get(&format!("/api/usage?{query}"), &token).await;
        reply.problem(422, Some(field));
        assert!(
            reply.body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("years 0000 to 9999"),
            "{:#}",
            reply.body
        );
    }
    for (query, field) in [
        ("from=9999-12-31T23:30:00-01:00", "from"),
        ("to=%2B10000-01-01T00:00:00Z", "to"),
        ("from=0000-01-01T00:00:00%2B00:01", "from"),
    ] {
        let path = format!("/api/agents/{agent}/timeline?{query}");
        h.get(&path, &token).await.problem(422, Some(field));
    }
    assert_eq!(
        h.snapshot().await,
        before,
        "a refused query changed the database"
    );

    // The edges themselves are taken, and answered with four-digit years.
    for (from, to) in [("0000-01-01", "0000-01-01"), ("9999-12-31", "9999-12-31")] {
        let reply = h
            .get(&format!("/api/usage?from={from}&to={to}"), &token)
            .await;
        assert_eq!(reply.status, 200, "{:#}", reply.body);
        assert_eq!(
            (reply.body["from"].as_str(), reply.body["to"].as_str()),
            (Some(from), Some(to))
        );
    }
    let window = format!(
        "/api/agents/{agent}/timeline?from=0000-01-01T00:00:00Z&to=9999-12-31T23:59:59.999Z"
    );
    let timeline = h.get(&window, &token).await;
    assert_eq!(timeline.status, 200, "{:#}", timeline.body);
    assert!(!timeline.body["periods"].as_array().unwrap().is_empty());
}

async fn a_method_a_path_lacks_is_answered_405_before_its_key_is_claimed(db: TestDb) {
    let h = Harness::new(db).await;
    let before = h.snapshot().await;
    let key = vec![
        ("idempotency-key", "key-1".to_owned()),
        ("content-type", "application/json".to_owned()),
    ];
    let refused = h
        .raw(
            Method::DELETE,
            "/api/accounts",
            Some(&h.operator),
            &key,
            b"{}".to_vec(),
        )
        .await;
    refused.problem(405, None);
    assert_eq!(refused.header("allow"), Some("POST"));
    let anonymous = h
        .raw(Method::DELETE, "/api/images", None, &key, Vec::new())
        .await;
    anonymous.problem(405, None);
    assert_eq!(anonymous.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(
        h.snapshot().await,
        before,
        "a refused method changed the database"
    );

    // The key was not claimed: the request it is meant for runs.
    let created = h
        .raw(
            Method::POST,
            "/api/accounts",
            Some(&h.operator),
            &key,
            br#"{"name": "Acme"}"#.to_vec(),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
}
