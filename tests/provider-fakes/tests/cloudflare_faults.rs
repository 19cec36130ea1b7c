//! The Cloudflare fake's refusals (auth, foreign account or zone, unknown ids and paths), its limit
//! of requests per window with the token blocked once over, and injected faults: errors, stalls,
//! and a crash between "done" and "answered".

mod cloudflare_common;

use std::time::{Duration, Instant};

use cloudflare_common::{Api, assert_answers_enveloped};
use provider_fakes::cloudflare::{CloudflareFake, CrashMode, Method, Options};
use serde_json::{Value, json};

const TUNNELS: &str = "/client/v4/accounts/{account_id}/cfd_tunnel";
const RECORDS: &str = "/client/v4/zones/{zone_id}/dns_records";

#[tokio::test]
async fn every_refusal_is_in_the_envelope_with_cloudflares_status() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let unknown_tunnel = "6f0a3c1e-8a7b-4c2d-9e1f-0a1b2c3d4e5f";
    let cases: Vec<(cloudflare_common::Reply, u16, u64)> = vec![
        (
            Api::with_token(&fake, "wrong").get(&api.tunnels("")).await,
            401,
            10000,
        ),
        (
            api.get("/accounts/00000000000000000000000000000000/cfd_tunnel")
                .await,
            403,
            10000,
        ),
        (api.get("/accounts/nope/cfd_tunnel").await, 404, 7003),
        (
            api.get("/zones/00000000000000000000000000000000/dns_records")
                .await,
            403,
            10000,
        ),
        (
            api.get(&api.tunnels(&format!("/{unknown_tunnel}"))).await,
            404,
            1003,
        ),
        (api.get(&api.tunnels("/not-a-uuid")).await, 404, 1003),
        (
            api.get(&api.tunnels(&format!("/{unknown_tunnel}/token")))
                .await,
            404,
            1003,
        ),
        (
            api.delete(&api.tunnels(&format!("/{unknown_tunnel}/connections")))
                .await,
            404,
            1003,
        ),
        (
            api.delete(&api.records("/0123456789abcdef0123456789abcdef"))
                .await,
            404,
            81044,
        ),
        (api.get("/user/tokens/verify").await, 404, 7003),
        (
            api.post(&api.tunnels(""), json!({"config_src": "cloudflare"}))
                .await,
            400,
            1001,
        ),
        (
            api.post(&api.tunnels(""), json!({"name": 5})).await,
            400,
            9207,
        ),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(
            (reply.status, reply.code()),
            (*status, *code),
            "case {i}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["success"], false, "case {i}");
        assert_eq!(reply.body["messages"], json!([]), "case {i}");
        assert_eq!(reply.body["result"], Value::Null, "case {i}");
        assert!(!reply.message().is_empty(), "case {i}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "case {i}: cloudflared reads error bodies only with exactly this type"
        );
    }
    assert_eq!(cases[0].1, 401);
    assert_eq!(cases[0].0.message(), "Authentication error");
    assert_eq!(fake.control().calls(&Method::GET, "<unmatched>"), 1);
    assert_eq!(assert_answers_enveloped(fake.control()), cases.len());
}

#[tokio::test]
async fn over_the_limit_the_token_is_blocked_for_a_window_with_retry_after() {
    let fake = CloudflareFake::start(Options {
        rate_limit: 3,
        rate_window: Duration::from_millis(1500),
        ..Options::default()
    })
    .await
    .unwrap();
    let api = Api::new(&fake);
    let first = api.get(&api.tunnels("")).await;
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"default\";q=3;w=1")
    );
    let r = first.header("ratelimit").unwrap();
    assert!(r.starts_with("\"default\";r=2;t="), "{r}");
    assert!(first.header("retry-after").is_none(), "only on a 429");
    api.get(&api.tunnels("")).await;
    api.get(&api.records("")).await;
    assert_eq!(fake.control().rate_limit_remaining(), 0);

    let refused = api.create_tunnel("not-now").await;
    assert_eq!(
        (refused.status, refused.code()),
        (429, 971),
        "{:?}",
        refused.body
    );
    assert_eq!(refused.body["success"], false);
    assert!(refused.message().contains("More than 3 requests"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(
        fake.control().tunnels().is_empty(),
        "a refused call does nothing"
    );
    // Blocked: every call is refused, whatever the route, the wrong path too.
    assert_eq!(api.get("/nothing/here").await.status, 429);
    assert_eq!(api.get(&api.records("")).await.status, 429);
    // Calls without the token are nobody's: 401, and they do not count.
    assert_eq!(
        Api::with_token(&fake, "x")
            .get(&api.tunnels(""))
            .await
            .status,
        401
    );
    assert_eq!(fake.control().rate_limited_calls(), 3);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let back = api.create_tunnel("now").await;
    assert_eq!(back.status, 200, "the block ends after a window");
    assert_eq!(fake.control().rate_limit_remaining(), 2);
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn the_default_limit_is_cloudflares() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let reply = api.get(&api.tunnels("")).await;
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default\";q=1200;w=300")
    );
    assert!(
        reply
            .header("ratelimit")
            .unwrap()
            .starts_with("\"default\";r=1199;")
    );
    assert_eq!(fake.control().rate_limit_remaining(), 1199);
    fake.control().set_rate_limit(1, Duration::from_mins(1));
    assert_eq!(api.get(&api.tunnels("")).await.status, 200);
    let refused = api.get(&api.tunnels("")).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"));
}

#[tokio::test]
async fn injected_errors_hit_the_next_matching_calls_only() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    let control = fake.control();
    control.fail_next(&Method::POST, TUNNELS, 2, 503, 10013);
    control.fail_next(&Method::POST, RECORDS, 1, 429, 971);
    for _ in 0..2 {
        let reply = api.create_tunnel("retry-me").await;
        assert_eq!(
            (reply.status, reply.code()),
            (503, 10013),
            "{:?}",
            reply.body
        );
        assert_eq!(reply.body["success"], false);
    }
    assert!(control.tunnels().is_empty(), "a failed call does nothing");
    let id = api.tunnel("retry-me").await;
    assert_eq!(api.cname("x", &id).await.status, 429);
    assert_eq!(api.cname("x", &id).await.status, 200);
    assert_eq!(control.calls(&Method::POST, TUNNELS), 3);
    assert_eq!(control.calls(&Method::POST, RECORDS), 2);
    assert_eq!(control.calls_total(), 5);
    assert_eq!(
        control.rate_limited_calls(),
        0,
        "an injected 429 is not the limit"
    );
    control.reset_calls();
    assert_eq!(control.calls_total(), 0);
    assert_answers_enveloped(control);
}

#[tokio::test]
#[should_panic(expected = "serves no route")]
async fn a_fault_on_a_route_the_fake_does_not_serve_is_a_test_bug() {
    let fake = cloudflare_common::start().await;
    fake.control().fail_next(
        &Method::POST,
        "/client/v4/accounts/{account_id}/tunnels",
        1,
        500,
        1000,
    );
}

#[tokio::test]
async fn a_stalled_call_answers_late_but_answers() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    fake.control()
        .stall_next(&Method::GET, TUNNELS, 1, Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(api.get(&api.tunnels("")).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    api.get(&api.tunnels("")).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "only the next call stalls"
    );
}

#[tokio::test]
async fn a_crash_between_done_and_answered_leaves_a_tunnel_to_adopt() {
    let fake = cloudflare_common::start().await;
    let api = Api::new(&fake);
    for (mode, name) in [
        (CrashMode::DropConnection, "agent-dropped"),
        (CrashMode::EmptyServerError, "agent-bare500"),
    ] {
        fake.control().crash_next(&Method::POST, TUNNELS, 1, mode);
        let body = json!({"name": name, "config_src": "cloudflare"});
        match api
            .send(reqwest::Method::POST, &api.tunnels(""), Some(body))
            .await
        {
            Err(_) => assert_eq!(mode, CrashMode::DropConnection),
            Ok(reply) => {
                assert_eq!(mode, CrashMode::EmptyServerError);
                assert_eq!((reply.status, reply.body.is_null()), (500, true));
            }
        }
        // What a careful client does next: retry, meet the name, look it up and adopt it.
        assert_eq!(api.create_tunnel(name).await.code(), 1013);
        let found = api
            .get(&api.tunnels(&format!("?name={name}&is_deleted=false")))
            .await;
        assert_eq!(found.result().as_array().unwrap().len(), 1);
    }
    assert_eq!(
        fake.control().tunnels().len(),
        2,
        "exactly the tunnels the crashed calls made"
    );

    // A crashed record delete still deletes.
    let tunnel = fake.control().tunnels()[0].id.clone();
    let record = api.cname("agent-crash", &tunnel).await.result()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.control().crash_next(
        &Method::DELETE,
        "/client/v4/zones/{zone_id}/dns_records/{dns_record_id}",
        1,
        CrashMode::EmptyServerError,
    );
    assert_eq!(
        api.delete(&api.records(&format!("/{record}"))).await.status,
        500
    );
    assert_eq!(
        api.delete(&api.records(&format!("/{record}"))).await.code(),
        81044
    );
    assert_answers_enveloped(fake.control());
}

#[tokio::test]
async fn a_late_answer_comes_after_the_call_took_effect() {
    let fake = cloudflare_common::start().await;
    fake.control()
        .stall_answer_next(&Method::POST, RECORDS, 1, Duration::from_millis(400));
    let impatient = test_support::http_client_builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let sent = impatient
        .post(format!("{}/zones/{}/dns_records", fake.url(), fake.zone_id()))
        .bearer_auth(fake.token())
        .json(&json!({"type": "CNAME", "name": "slow", "content": "t.cfargotunnel.com", "proxied": true}))
        .send()
        .await;
    assert!(sent.unwrap_err().is_timeout());
    assert_eq!(
        fake.control().dns_records().len(),
        1,
        "the record exists though the client gave up"
    );
    let api = Api::new(&fake);
    assert_eq!(api.cname("slow", "t").await.code(), 81053);
}
