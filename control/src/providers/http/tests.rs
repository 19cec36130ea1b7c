//! The client against a loopback provider that answers from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use control_api::Timestamp;

use super::*;
use crate::clock::ManualClock;

/// One scripted answer: status, headers, body.
type Canned = (u16, Vec<(&'static str, String)>, &'static str);

/// What the loopback provider saw and will answer, in order.
#[derive(Default)]
struct Script {
    answers: VecDeque<Canned>,
    seen: Vec<(String, Option<String>)>,
}

type Shared = Arc<Mutex<Script>>;

async fn answer(
    State(script): State<Shared>,
    request: axum::extract::Request,
) -> impl IntoResponse {
    let mut script = script.lock().unwrap();
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    script
        .seen
        .push((format!("{} {}", request.method(), request.uri()), auth));
    let (status, headers, body) =
        script
            .answers
            .pop_front()
            .unwrap_or((500, Vec::new(), "script ran out"));
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).unwrap());
    }
    response
}

async fn provider(answers: Vec<Canned>) -> (String, Shared) {
    let script = Arc::new(Mutex::new(Script {
        answers: answers.into(),
        seen: Vec::new(),
    }));
    let app = Router::new().fallback(answer).with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, script)
}

const NOW_MS: i64 = 1_795_000_000_000;

fn client(base: &str) -> ApiClient {
    ApiClient::new(
        "test",
        base,
        Secret("tok_secret".to_owned()),
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(40),
            max_wait: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        },
        classify_status,
        Arc::new(ManualClock::new(Timestamp::from_millis(NOW_MS))),
    )
    .unwrap()
}

fn calls(script: &Shared) -> Vec<String> {
    script
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|(c, _)| c.clone())
        .collect()
}

#[tokio::test]
async fn a_get_is_tried_again_through_transient_failures() {
    let (url, script) = provider(vec![
        (503, vec![], ""),
        (502, vec![], ""),
        (200, vec![], r#"{"n": 7}"#),
    ])
    .await;
    let n: serde_json::Value = client(&url).get("/servers/7").await.unwrap();
    assert_eq!(n["n"], 7);
    assert_eq!(calls(&script), ["GET /servers/7"; 3]);
    let seen = script.lock().unwrap();
    assert_eq!(seen.seen[0].1.as_deref(), Some("Bearer tok_secret"));
}

#[tokio::test]
async fn a_post_that_may_have_acted_is_not_repeated_but_a_refused_one_is() {
    let body = serde_json::json!({"name": "agt-1"});
    let (url, script) = provider(vec![(503, vec![], "")]).await;
    let error = client(&url)
        .call(Method::POST, "/servers", Some(&body))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transient);
    assert_eq!(
        calls(&script).len(),
        1,
        "the step looks up by label, then repeats"
    );

    let (url, script) = provider(vec![
        (429, vec![("retry-after", "0".to_owned())], ""),
        (201, vec![], r#"{"server": {}}"#),
    ])
    .await;
    let created = client(&url)
        .call(Method::POST, "/servers", Some(&body))
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(calls(&script).len(), 2);
}

#[tokio::test]
async fn permanent_failures_come_back_at_once_with_what_the_provider_said() {
    let (url, script) = provider(vec![(422, vec![], "image not found")]).await;
    let error = client(&url)
        .get::<serde_json::Value>("/servers/7")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Permanent);
    assert!(
        error.message.contains("422") && error.message.contains("image not found"),
        "{error}"
    );
    assert!(!error.message.contains("tok_secret"));
    assert_eq!(calls(&script).len(), 1);
    let (url, _) = provider(vec![(404, vec![], "")]).await;
    assert_eq!(
        client(&url)
            .get::<serde_json::Value>("/servers/8")
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn a_wait_longer_than_the_policy_allows_goes_back_to_the_job() {
    // Hetzner's budget spent: no Retry-After, but RateLimit-Reset 90 s from now.
    let reset = (NOW_MS / 1_000 + 90).to_string();
    let (url, script) = provider(vec![(
        429,
        vec![
            ("ratelimit-remaining", "0".to_owned()),
            ("ratelimit-reset", reset),
        ],
        "",
    )])
    .await;
    let error = client(&url)
        .get::<serde_json::Value>("/servers")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::RateLimited);
    assert_eq!(error.retry_after, Some(Duration::from_secs(90)));
    assert_eq!(calls(&script).len(), 1, "not slept here");
}

#[tokio::test]
async fn the_attempts_are_bounded() {
    let (url, script) = provider(vec![(503, vec![], ""); 10]).await;
    let error = client(&url)
        .call(Method::DELETE, "/servers/7", None)
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transient);
    assert_eq!(calls(&script).len(), 4);
}

#[tokio::test]
async fn a_connection_that_never_opened_is_tried_again_even_for_a_post() {
    // A port nothing listens on: every attempt fails before sending.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let body = serde_json::json!({});
    let error = client(&format!("http://127.0.0.1:{port}"))
        .call(Method::POST, "/servers", Some(&body))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Transient);
    assert!(error.message.contains("cannot connect"), "{error}");
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    assert_eq!(retry_after("7", NOW_MS), Some(Duration::from_secs(7)));
    let date = time::OffsetDateTime::from_unix_timestamp(NOW_MS / 1_000 + 30)
        .unwrap()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap();
    assert_eq!(retry_after(&date, NOW_MS), Some(Duration::from_secs(30)));
    assert_eq!(
        retry_after("Sun, 06 Nov 1994 08:49:37 GMT", NOW_MS),
        Some(Duration::ZERO),
        "a date in the past means now"
    );
    assert_eq!(retry_after("soon", NOW_MS), None);
}
