//! The Hetzner fake's budget and injected faults: `RateLimit-*` headers and 429, failed calls,
//! stalls, and a crash between "created" and "answered" after which the server is found by label.

mod common;

use std::time::{Duration, Instant};

use common::{Api, assert_answers_match_spec, id};
use provider_fakes::hetzner::{CrashMode, Method};
use serde_json::json;

fn header(reply: &common::Reply, name: &str) -> u64 {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn every_answer_carries_the_budget_and_a_spent_budget_is_429() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let first = api.get("/servers").await;
    assert_eq!(
        (
            header(&first, "ratelimit-limit"),
            header(&first, "ratelimit-remaining")
        ),
        (3600, 3599)
    );
    let second = api.get("/servers").await;
    assert_eq!(header(&second, "ratelimit-remaining"), 3598);
    assert!(header(&second, "ratelimit-reset") >= header(&first, "ratelimit-reset"));
    assert!(second.headers.contains_key("x-correlation-id"));

    fake.control().set_rate_limit(3, 0.0);
    for remaining in [2, 1, 0] {
        let reply = api.get("/servers").await;
        assert_eq!(
            (reply.status, header(&reply, "ratelimit-remaining")),
            (200, remaining)
        );
    }
    let refused = api.create_server("not-now", json!({})).await;
    assert_eq!(
        (refused.status, refused.code()),
        (429, "rate_limit_exceeded"),
        "{}",
        refused.body
    );
    assert_eq!(header(&refused, "ratelimit-limit"), 3);
    assert_eq!(fake.control().rate_limited_calls(), 1);
    let wrong_path = api.get("/serverz").await;
    assert_eq!(
        (wrong_path.status, wrong_path.code()),
        (429, "rate_limit_exceeded"),
        "a wrong path spends budget too"
    );
    assert!(
        fake.control().servers().is_empty(),
        "a refused call does nothing"
    );

    // Refilled at limit/3600 per second by default; faster here so the test stays short.
    fake.control().set_rate_limit(3, 50.0);
    for _ in 0..3 {
        api.get("/servers").await;
    }
    let now = header(&api.get("/servers").await, "ratelimit-reset");
    assert_eq!(api.get("/servers").await.status, 429);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let again = api.get("/servers").await;
    assert_eq!(again.status, 200, "the budget refills over time");
    assert!(header(&again, "ratelimit-reset") >= now);
    // Calls without the token spend no budget.
    fake.control().set_rate_limit(1, 0.0);
    assert_eq!(
        Api::with_token(&fake, "nope").get("/servers").await.status,
        401
    );
    assert_eq!(api.get("/servers").await.status, 200);
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn the_hourly_budget_refills_one_per_second_by_default() {
    let fake = provider_fakes::hetzner::HetznerFake::start(provider_fakes::hetzner::Options {
        rate_limit: 3600,
        ..Default::default()
    })
    .await
    .unwrap();
    let api = Api::new(&fake);
    for _ in 0..5 {
        api.get("/servers").await;
    }
    assert_eq!(fake.control().rate_limit_remaining(), 3595);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(fake.control().rate_limit_remaining(), 3596);
}

#[tokio::test]
async fn injected_errors_hit_the_next_matching_calls_only() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let control = fake.control();
    control.fail_next(&Method::POST, "/v1/servers", 2, 503, "unavailable");
    control.fail_next(
        &Method::POST,
        "/v1/servers/{id}/actions/poweron",
        1,
        423,
        "locked",
    );
    control.fail_next(
        &Method::GET,
        "/v1/servers",
        1,
        403,
        "resource_limit_exceeded",
    );
    control.fail_next(&Method::POST, "/v1/firewalls", 1, 409, "uniqueness_error");
    control.fail_next(&Method::POST, "/v1/volumes", 1, 422, "invalid_input");
    control.fail_next(
        &Method::DELETE,
        "/v1/servers/{id}",
        1,
        429,
        "rate_limit_exceeded",
    );
    for _ in 0..2 {
        let reply = api.create_server("retry-me", json!({})).await;
        assert_eq!((reply.status, reply.code()), (503, "unavailable"));
    }
    assert!(control.servers().is_empty(), "a failed call does nothing");
    let created = api.create_server("retry-me", json!({})).await;
    assert_eq!(created.status, 201);
    let server = id(&created.body["server"]);
    assert_eq!(api.get("/servers").await.code(), "resource_limit_exceeded");
    assert_eq!(api.get("/servers").await.status, 200);
    assert_eq!(
        api.post(&format!("/servers/{server}/actions/poweron"), json!({}))
            .await
            .code(),
        "locked"
    );
    assert_eq!(
        api.post("/firewalls", json!({"name": "f"})).await.code(),
        "uniqueness_error"
    );
    assert_eq!(
        api.post(
            "/volumes",
            json!({"name": "v", "size": 10, "location": "fsn1"})
        )
        .await
        .code(),
        "invalid_input"
    );
    assert_eq!(api.delete(&format!("/servers/{server}")).await.status, 429);
    assert_eq!(control.calls(&Method::POST, "/v1/servers"), 3);
    assert_eq!(control.calls(&Method::GET, "/v1/servers"), 2);
    assert_eq!(control.calls_total(), 9);
    control.reset_calls();
    assert_eq!(control.calls_total(), 0);
    assert_answers_match_spec(control);
}

#[tokio::test]
#[should_panic(expected = "serves no route")]
async fn a_fault_on_a_route_the_fake_does_not_serve_is_a_test_bug() {
    let fake = common::start(Duration::ZERO).await;
    fake.control()
        .fail_next(&Method::POST, "/v1/server", 1, 503, "unavailable");
}

#[tokio::test]
async fn a_stalled_call_answers_late_but_answers() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    fake.control()
        .stall_next(&Method::GET, "/v1/servers", 1, Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(api.get("/servers").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    api.get("/servers").await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "only the next call stalls"
    );
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn a_crash_between_created_and_answered_leaves_a_server_to_adopt() {
    let fake = common::start(Duration::from_millis(20)).await;
    let api = Api::new(&fake);
    let labels = json!({"control.example/agent": "01hz0000000000000000000000"});
    for mode in [CrashMode::DropConnection, CrashMode::EmptyServerError] {
        let name = format!(
            "agent-{}",
            if mode == CrashMode::DropConnection {
                "dropped"
            } else {
                "bare500"
            }
        );
        fake.control()
            .crash_next(&Method::POST, "/v1/servers", 1, mode);
        let body =
            json!({"name": name, "server_type": "cx22", "image": "debian-12", "labels": labels});
        match api
            .send(reqwest::Method::POST, "/servers", Some(body))
            .await
        {
            Err(_) => assert_eq!(mode, CrashMode::DropConnection),
            Ok(reply) => {
                assert_eq!(mode, CrashMode::EmptyServerError);
                assert_eq!((reply.status, reply.body.is_null()), (500, true));
            }
        }
        // What a careful client does next: retry, meet the name, look it up by label and adopt it.
        let retry = api.create_server(&name, labels.clone()).await;
        assert_eq!(retry.code(), "uniqueness_error");
    }
    let found = api
        .get("/servers?label_selector=control.example%2Fagent%3D01hz0000000000000000000000")
        .await;
    let names: Vec<&str> = found.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent-dropped", "agent-bare500"]);
    let server = id(&found.body["servers"][0]);
    api.wait_status(server, "running").await;
    assert_eq!(
        fake.control().servers().len(),
        2,
        "exactly the servers the crashed calls created"
    );
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn a_crashed_delete_still_deletes() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let fw = id(&api
        .post("/firewalls", json!({"name": "fw-crash"}))
        .await
        .body["firewall"]);
    fake.control().crash_next(
        &Method::DELETE,
        "/v1/firewalls/{id}",
        1,
        CrashMode::EmptyServerError,
    );
    assert_eq!(api.delete(&format!("/firewalls/{fw}")).await.status, 500);
    assert_eq!(
        api.delete(&format!("/firewalls/{fw}")).await.code(),
        "not_found"
    );
    assert!(fake.control().firewalls().is_empty());
    assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn calls_to_paths_the_fake_does_not_serve_are_counted_404s() {
    let fake = common::start(Duration::ZERO).await;
    let api = Api::new(&fake);
    let reply = api.get("/servers/1/metrics").await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
    assert!(reply.headers.contains_key("ratelimit-remaining"));
    assert_eq!(fake.control().calls(&Method::GET, "<unmatched>"), 1);
    assert_eq!(
        Api::with_token(&fake, "x").get("/nothing").await.status,
        401
    );
}

#[tokio::test]
async fn a_late_answer_comes_after_the_call_took_effect() {
    let fake = common::start(Duration::ZERO).await;
    fake.control()
        .stall_answer_next(&Method::POST, "/v1/servers", 1, Duration::from_millis(400));
    let impatient = test_support::http_client_builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let sent = impatient
        .post(format!("{}/servers", fake.url()))
        .bearer_auth(fake.token())
        .json(&json!({"name": "slow-1", "server_type": "cx22", "image": "debian-12"}))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    assert_eq!(
        fake.control().servers().len(),
        1,
        "the server exists though the client gave up"
    );
    // Let the late answer go out (or be dropped with the connection) before looking again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    fake.control().clear_answers();
    let api = Api::new(&fake);
    assert_eq!(
        api.create_server("slow-1", json!({})).await.code(),
        "uniqueness_error"
    );
    assert_eq!(assert_answers_match_spec(fake.control()), 1);
}
