//! The Fly fake: apps, volumes and machines with Fly's shapes; machine states that move on over
//! time and the `wait` endpoint (200, or 408 when the timeout runs out first); destroy refused
//! while running unless forced; the volume released once its machine is destroyed; Fly's error
//! body on every refusal; planting a legacy Agent; injected faults and the optional limit.

// Test code: a failed expectation is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "http/mod.rs"]
mod http;

use std::time::{Duration, Instant};

use http::{Client, Reply};
use provider_fakes::fly::{CrashMode, FlyFake, MachineState, Method, Options};
use serde_json::json;

const IMAGE: &str =
    "registry.fly.io/agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn start() -> (FlyFake, Client) {
    let fake = FlyFake::start(Options {
        transition_delay: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    let api = Client::new(fake.url(), fake.token());
    (fake, api)
}

fn error(reply: &Reply) -> &str {
    reply.body["error"].as_str().unwrap_or("")
}

/// Makes app `agent-one` (a second time is `name_taken`) and a volume in it; returns its id.
async fn app_and_volume(fake: &FlyFake, api: &Client) -> String {
    let created = api
        .post(
            "/apps",
            json!({"app_name": "agent-one", "org_slug": fake.org_slug()}),
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let taken = api
        .post(
            "/apps",
            json!({"app_name": "agent-one", "org_slug": fake.org_slug()}),
        )
        .await;
    assert_eq!(taken.status, 422);
    assert_eq!(taken.body["status"], "name_taken");

    let volume = api
        .post(
            "/apps/agent-one/volumes",
            json!({"name": "data", "region": "fra", "size_gb": 10, "encrypted": true}),
        )
        .await;
    assert_eq!(volume.status, 200, "{:?}", volume.body);
    let volume_id = volume.body["id"].as_str().unwrap().to_owned();
    assert!(volume_id.starts_with("vol_"));
    assert_eq!(volume.body["attached_machine_id"], json!(null));

    volume_id
}

#[tokio::test]
async fn a_machine_lives_its_states_through_the_api() {
    let (fake, api) = start().await;
    let volume_id = app_and_volume(&fake, &api).await;
    let machine = api
        .post(
            "/apps/agent-one/machines",
            json!({"name": "agent-one", "region": "fra", "config": {
                "image": IMAGE,
                "env": {"AGENT_CONFIG": "{}"},
                "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024},
                "mounts": [{"volume": volume_id, "path": "/data"}],
                "metadata": {"control_kind": "agent"},
            }}),
        )
        .await;
    assert_eq!(machine.status, 200, "{:?}", machine.body);
    assert_eq!(machine.body["state"], "starting");
    let id = machine.body["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 14);
    assert_eq!(
        machine.body["image_ref"]["digest"],
        IMAGE.split_once('@').unwrap().1
    );
    assert_eq!(machine.body["image_ref"]["repository"], "agent");
    assert_eq!(machine.body["config"]["env"]["AGENT_CONFIG"], "{}");
    let path = format!("/apps/agent-one/machines/{id}");

    let waited = api
        .get(&format!("{path}/wait?state=started&timeout=5"))
        .await;
    assert_eq!(waited.status, 200, "{:?}", waited.body);
    assert_eq!(api.get(&path).await.body["state"], "started");
    let attached = api
        .get(&format!("/apps/agent-one/volumes/{volume_id}"))
        .await;
    assert_eq!(attached.body["attached_machine_id"], json!(id));

    let refused = api.delete(&path).await;
    assert_eq!(refused.status, 412);
    assert!(
        error(&refused).starts_with("failed_precondition"),
        "{:?}",
        refused.body
    );
    let busy = api
        .delete(&format!("/apps/agent-one/volumes/{volume_id}"))
        .await;
    assert_eq!(busy.status, 412);

    let stop = api
        .post(
            &format!("{path}/stop"),
            json!({"signal": "SIGTERM", "timeout": "30s"}),
        )
        .await;
    assert_eq!(stop.status, 200);
    assert_eq!(api.get(&path).await.body["state"], "stopping");
    let waited = api
        .get(&format!("{path}/wait?state=stopped&timeout=5"))
        .await;
    assert_eq!(waited.status, 200);
    assert_eq!(
        fake.control().machine(&id).unwrap().last_signal.as_deref(),
        Some("SIGTERM")
    );

    let started = api.post(&format!("{path}/start"), json!({})).await;
    assert_eq!(started.status, 200);
    assert_eq!(started.body["previous_state"], "stopped");
    assert_eq!(
        api.get(&format!("{path}/wait?state=started&timeout=5"))
            .await
            .status,
        200
    );
    let killed = api
        .post(&format!("{path}/stop"), json!({"signal": "SIGKILL"}))
        .await;
    assert_eq!(killed.status, 200);
    assert_eq!(api.get(&path).await.body["state"], "stopped");

    let listed = api.get("/apps/agent-one/machines").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    let apps = api
        .get(&format!("/apps?org_slug={}", fake.org_slug()))
        .await;
    assert_eq!(apps.body["total_apps"], 1);
    assert_eq!(apps.body["apps"][0]["name"], "agent-one");
    assert_eq!(apps.body["apps"][0]["machine_count"], 1);

    tear_down(&api, &path, &volume_id).await;
    assert!(fake.control().apps().is_empty());
}

/// Destroys the machine (forced), waits for it with fly-go's repeated `state=`, then deletes its
/// volume and its app.
async fn tear_down(api: &Client, path: &str, volume_id: &str) {
    let destroy = api.delete(&format!("{path}?force=true")).await;
    assert_eq!(destroy.status, 200);
    assert_eq!(
        api.get(&format!(
            "{path}/wait?state=suspended&state=destroyed&timeout=5"
        ))
        .await
        .status,
        200
    );
    assert_eq!(api.get(path).await.body["state"], "destroyed");
    assert_eq!(api.get("/apps/agent-one/machines").await.body, json!([]));
    assert_eq!(api.delete(&format!("{path}?force=true")).await.status, 404);
    let deleted = api
        .delete(&format!("/apps/agent-one/volumes/{volume_id}"))
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(api.get("/apps/agent-one/volumes").await.body, json!([]));
    assert_eq!(api.delete("/apps/agent-one").await.status, 202);
    let gone = api.get("/apps/agent-one").await;
    assert_eq!((gone.status, error(&gone)), (404, "app not found"));
}

#[tokio::test]
async fn wait_answers_408_when_the_state_does_not_come() {
    let (fake, api) = start().await;
    let planted = fake
        .control()
        .plant("legacy-1", IMAGE, MachineState::Stopped, &[]);
    let path = format!("/apps/legacy-1/machines/{}", planted.machine_id);
    let before = Instant::now();
    let reply = api
        .get(&format!("{path}/wait?state=started&timeout=1"))
        .await;
    assert_eq!(reply.status, 408);
    assert!(
        error(&reply).starts_with("deadline_exceeded"),
        "{:?}",
        reply.body
    );
    assert!(before.elapsed() >= Duration::from_millis(900));
    let bad = api.get(&format!("{path}/wait?state=sideways")).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_planted_legacy_agent_is_there_and_takes_metadata() {
    let (fake, api) = start().await;
    let planted = fake.control().plant(
        "legacy-2",
        IMAGE,
        MachineState::Started,
        &[("AGENT_CONFIG", "x")],
    );
    let path = format!("/apps/legacy-2/machines/{}", planted.machine_id);
    let machine = api.get(&path).await;
    assert_eq!(machine.body["state"], "started");
    assert_eq!(machine.body["instance_id"], planted.instance_id.as_str());
    assert_eq!(
        machine.body["config"]["mounts"][0]["volume"],
        planted.volume_id.as_str()
    );
    let set = api
        .post(
            &format!("{path}/metadata/control_id"),
            json!({"value": "agt_1"}),
        )
        .await;
    assert_eq!(set.status, 204);
    assert_eq!(
        api.get(&format!("{path}/metadata")).await.body["control_id"],
        "agt_1"
    );
    assert_eq!(
        api.get(&path).await.body["config"]["metadata"]["control_id"],
        "agt_1"
    );
    assert_eq!(
        fake.control()
            .machine(&planted.machine_id)
            .unwrap()
            .metadata["control_id"],
        "agt_1"
    );
    let bad_key = api
        .post(&format!("{path}/metadata/a%2Fb"), json!({"value": "x"}))
        .await;
    assert_eq!(bad_key.status, 400);
}

#[tokio::test]
async fn refusals_use_flys_error_body() {
    let (fake, api) = start().await;
    let planted = fake
        .control()
        .plant("legacy-3", IMAGE, MachineState::Started, &[]);
    let wrong = Client::new(fake.url(), "wrong");
    let cases = [
        (
            wrong.get("/apps/legacy-3/machines").await,
            401,
            "unauthorized",
        ),
        (api.get("/apps/nope/machines").await, 404, "app not found"),
        (
            api.get("/apps/legacy-3/machines/0000").await,
            404,
            "machine not found",
        ),
        (
            api.get("/apps/legacy-3/volumes/vol_nope").await,
            404,
            "volume not found",
        ),
        (
            api.get("/apps?org_slug=someone-else").await,
            404,
            "organization not found",
        ),
        (api.get("/nowhere").await, 404, "404 page not found"),
    ];
    for (reply, status, message) in cases {
        assert_eq!(
            (reply.status, error(&reply)),
            (status, message),
            "{:?}",
            reply.body
        );
        assert!(reply.header("fly-request-id").is_some());
    }
    let flyv1 = fake.url();
    let http = test_support::http_client();
    let reply = http
        .get(format!(
            "{flyv1}/apps/legacy-3/machines/{}",
            planted.machine_id
        ))
        .header("authorization", format!("FlyV1 {}", fake.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
}

#[tokio::test]
async fn faults_fail_stall_and_crash_calls() {
    let (fake, api) = start().await;
    fake.control().plant_app("legacy-4");
    let control = fake.control();
    control.fail_next(
        &Method::POST,
        "/v1/apps/{app}/machines",
        1,
        422,
        "insufficient_capacity",
        "insufficient resources available to fulfill request",
    );
    let config = json!({"config": {"image": IMAGE}});
    let refused = api.post("/apps/legacy-4/machines", config.clone()).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.body["status"], "insufficient_capacity");
    assert!(control.live_machines().is_empty());

    control.fail_next(
        &Method::GET,
        "/v1/apps/{app}/machines",
        1,
        503,
        "",
        "upstream",
    );
    let unavailable = api.get("/apps/legacy-4/machines").await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.body, json!({"error": "upstream"}));

    control.crash_next(
        &Method::POST,
        "/v1/apps/{app}/machines",
        1,
        CrashMode::EmptyServerError,
    );
    let crashed = api.post("/apps/legacy-4/machines", config.clone()).await;
    assert_eq!(crashed.status, 500);
    assert_eq!(
        control.live_machines().len(),
        1,
        "created before the answer was lost"
    );

    control.crash_next(
        &Method::POST,
        "/v1/apps/{app}/machines",
        1,
        CrashMode::DropConnection,
    );
    let dropped = api
        .send(Method::POST, "/apps/legacy-4/machines", Some(config))
        .await;
    assert!(dropped.is_err());
    assert_eq!(control.live_machines().len(), 2);

    control.stall_next(
        &Method::GET,
        "/v1/apps/{app}",
        1,
        Duration::from_millis(300),
    );
    let before = Instant::now();
    assert_eq!(api.get("/apps/legacy-4").await.status, 200);
    assert!(before.elapsed() >= Duration::from_millis(300));
    assert_eq!(control.calls(&Method::POST, "/v1/apps/{app}/machines"), 3);
    assert!(
        control
            .answers()
            .iter()
            .any(|a| a.injected && a.status == 503)
    );
}

#[tokio::test]
async fn the_optional_limit_answers_429_with_retry_after() {
    let (fake, api) = start().await;
    fake.control().set_rate_limit(1, 3);
    for _ in 0..3 {
        assert_eq!(api.get("/apps").await.status, 200);
    }
    let limited = api.get("/apps").await;
    assert_eq!(limited.status, 429);
    assert_eq!(error(&limited), "rate limit exceeded");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(fake.control().rate_limited_calls(), 1);
}
