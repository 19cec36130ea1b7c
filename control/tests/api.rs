//! The dashboard's API, end to end through the router, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use axum::http::Method;
use common::{DIGEST, Harness};
use control_api::Timestamp;
use serde_json::{Value, json};
use test_support::{TestDb, dual_backend_tests};

dual_backend_tests!(
    lifecycle_walkthrough,
    accounts_cannot_see_each_other,
    idempotency_keys_replay_and_create_nothing_new,
    bad_input_is_refused_and_changes_nothing,
    agents_keep_their_image_pin,
    transfer_splits_the_ledger_at_its_instant,
    operator_endpoints_refuse_account_tokens,
    tokens_are_checked,
    conflicting_operations_are_refused,
    listings_page,
    a_callers_request_id_is_kept_beside_ours,
);

async fn lifecycle_walkthrough(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (account, token) = h.account("Acme").await;

    let accepted = h
        .post("/api/agents", &token, json!({"name": "dev-box"}))
        .await;
    assert_eq!(accepted.status, 202);
    assert_eq!(
        accepted.body["state"], "paused",
        "paused until its VM is seen running"
    );
    assert_eq!(accepted.body["operation"], "provision");
    assert_eq!(accepted.body["account_id"], account.as_str());
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let provisioned_at =
        Timestamp::parse(accepted.body["provisioned_at"].as_str().unwrap()).unwrap();

    h.advance(30_000);
    assert_eq!(h.run_jobs().await, 1);
    let running = h.get(&format!("/api/agents/{id}"), &token).await;
    assert_eq!(running.body["state"], "running");
    assert_eq!(running.body["operation"], Value::Null);
    assert!(h.local.vm(&id).unwrap().running);

    h.advance(3_600_000);
    let stopping = h
        .call(
            Method::POST,
            &format!("/api/agents/{id}/stop"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(stopping.status, 202);
    assert_eq!(stopping.body["operation"], "stop");
    h.advance(5_000);
    h.run_jobs().await;
    assert!(!h.local.vm(&id).unwrap().running);

    let timeline = h.get(&format!("/api/agents/{id}/timeline"), &token).await;
    let periods = timeline.body["periods"].as_array().unwrap();
    let shape: Vec<_> = periods
        .iter()
        .map(|p| (p["state"].as_str().unwrap(), p["ended_at"].is_null()))
        .collect();
    assert_eq!(
        shape,
        [("paused", false), ("running", false), ("paused", true)]
    );
    assert_eq!(periods[0]["started_at"], provisioned_at.to_string());
    for pair in periods.windows(2) {
        assert_eq!(pair[0]["ended_at"], pair[1]["started_at"], "periods tile");
    }

    h.advance(10_000);
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    let day = h.now().day();
    let usage = h
        .get(&format!("/api/usage?from={day}&to={day}"), &token)
        .await;
    assert_eq!(usage.status, 200);
    let rows = usage.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["resource_id"], id.as_str());
    assert_eq!(rows[0]["running_s"], 3_605);
    assert_eq!(rows[0]["paused_s"], 30 + 10);

    let destroying = h.delete(&format!("/api/agents/{id}"), &token).await;
    assert_eq!(destroying.status, 202);
    h.run_jobs().await;
    let destroyed = h.get(&format!("/api/agents/{id}"), &token).await;
    assert_eq!(destroyed.body["state"], "destroyed");
    assert!(destroyed.body["destroyed_at"].is_string());
    assert!(h.local.vm(&id).is_none(), "the VM is gone");

    let audit = h.get(&format!("/api/audit?resource_id={id}"), &token).await;
    let actions: Vec<_> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(
        actions,
        ["agent.provision", "agent.stop", "agent.destroy"],
        "destroyed resources keep their events"
    );
    assert!(
        audit.body["items"][0]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );

    let listed = h.get("/api/agents", &token).await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        0,
        "destroyed Agents are hidden by default"
    );
    let all = h.get("/api/agents?include_destroyed=true", &token).await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
}

async fn accounts_cannot_see_each_other(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, alice) = h.account("Alice").await;
    let (bob_account, bob) = h.account("Bob").await;
    let bobs = h.agent(&bob, "bobs-box").await;
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    let before = h.snapshot().await;

    let paths = [
        (Method::GET, format!("/api/agents/{bobs}"), None),
        (Method::GET, format!("/api/agents/{bobs}/timeline"), None),
        (Method::POST, format!("/api/agents/{bobs}/start"), None),
        (Method::POST, format!("/api/agents/{bobs}/stop"), None),
        (Method::DELETE, format!("/api/agents/{bobs}"), None),
        (
            Method::POST,
            format!("/api/agents/{bobs}/transfer"),
            Some(json!({"to_account": bob_account})),
        ),
    ];
    for (method, path, body) in paths {
        let reply = h.call(method.clone(), &path, Some(&alice), body).await;
        reply.problem(404, None);
        assert!(
            !reply.body["detail"].as_str().unwrap().contains("Bob"),
            "{method} {path}"
        );
    }
    let listed = h.get("/api/agents", &alice).await;
    assert_eq!(listed.body["items"], json!([]));
    let day = h.now().day();
    let usage = h
        .get(&format!("/api/usage?from={day}&to={day}"), &alice)
        .await;
    assert_eq!(usage.body["rows"], json!([]));
    let audit = h
        .get(&format!("/api/audit?resource_id={bobs}"), &alice)
        .await;
    assert_eq!(audit.body["items"], json!([]));
    let foreign = h
        .get(
            &format!("/api/usage?from={day}&to={day}&account_id={bob_account}"),
            &alice,
        )
        .await;
    foreign.problem(422, Some("account_id"));
    assert_eq!(h.snapshot().await, before, "nothing changed");

    // Bob still sees everything of his own.
    assert_eq!(
        h.get(&format!("/api/agents/{bobs}"), &bob).await.status,
        200
    );
}

async fn idempotency_keys_replay_and_create_nothing_new(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let key = |k: &str| {
        vec![
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", k.to_owned()),
        ]
    };
    let body = br#"{"name": "dev-box"}"#.to_vec();

    let first = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &key("k-1"),
            body.clone(),
        )
        .await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotent-replayed"), None);
    let after_first = h.snapshot().await;
    let again = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &key("k-1"),
            body.clone(),
        )
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the first answer, replayed");
    assert_eq!(
        h.snapshot().await,
        after_first,
        "the replay created nothing"
    );

    let reused = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &key("k-1"),
            br#"{"name": "other"}"#.to_vec(),
        )
        .await;
    reused.problem(422, Some("Idempotency-Key"));
    let listed = h.get("/api/agents", &token).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);

    h.run_jobs().await;
    let id = first.body["id"].as_str().unwrap();
    let stop = format!("/api/agents/{id}/stop");
    let stopped = h
        .raw(Method::POST, &stop, Some(&token), &key("k-2"), Vec::new())
        .await;
    assert_eq!(stopped.status, 202);
    h.run_jobs().await;
    let retried = h
        .raw(Method::POST, &stop, Some(&token), &key("k-2"), Vec::new())
        .await;
    assert_eq!(
        (
            retried.status.as_u16(),
            retried.header("idempotent-replayed")
        ),
        (202, Some("true"))
    );
    let audit = h.get(&format!("/api/audit?resource_id={id}"), &token).await;
    assert_eq!(
        audit.body["items"].as_array().unwrap().len(),
        2,
        "one provision, one stop"
    );

    // Keys are per account: another account's identical key is its own.
    let (_, other) = h.account("Other").await;
    let theirs = h
        .raw(Method::POST, "/api/agents", Some(&other), &key("k-1"), body)
        .await;
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.body["id"], first.body["id"]);

    // A token's secret is never stored for replay: the retry is told it exists.
    let account = first.body["account_id"].as_str().unwrap();
    let tokens = format!("/api/accounts/{account}/tokens");
    let made = h
        .raw(
            Method::POST,
            &tokens,
            Some(&h.operator),
            &key("t-1"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(made.status, 201);
    let secret = made.body["token"].as_str().unwrap().to_owned();
    let replay = h
        .raw(
            Method::POST,
            &tokens,
            Some(&h.operator),
            &key("t-1"),
            b"{}".to_vec(),
        )
        .await;
    replay.problem(409, None);
    assert!(
        replay.body["detail"]
            .as_str()
            .unwrap()
            .contains(made.body["id"].as_str().unwrap())
    );
    assert!(
        !h.snapshot().await.contains(&secret[secret.len() - 64..]),
        "the secret is not stored"
    );

    let bad_key = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &key(&"x".repeat(300)),
            b"{}".to_vec(),
        )
        .await;
    bad_key.problem(422, Some("Idempotency-Key"));
}

/// What is sent, and the answer expected: (what, method, path, token, body, status, field).
type BadRequest<'a> = (&'a str, Method, String, &'a str, Vec<u8>, u16, &'a str);

async fn bad_input_is_refused_and_changes_nothing(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (account, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev-box").await;
    let json_header = vec![("content-type", "application/json".to_owned())];
    let before = h.snapshot().await;

    let cases: Vec<BadRequest> = vec![
        ("malformed JSON", Method::POST, "/api/agents".into(), &token, br#"{"name": "a""#.to_vec(), 400, "body"),
        ("trailing text", Method::POST, "/api/agents".into(), &token, br#"{"name": "a"} x"#.to_vec(), 400, "body"),
        ("unknown field", Method::POST, "/api/agents".into(), &token, br#"{"name": "a", "size": "xl"}"#.to_vec(), 422, "size"),
        ("wrong type", Method::POST, "/api/agents".into(), &token, br#"{"name": 42}"#.to_vec(), 422, "name"),
        ("missing name", Method::POST, "/api/agents".into(), &token, br"{}".to_vec(), 422, "name"),
        ("empty name", Method::POST, "/api/agents".into(), &token, br#"{"name": ""}"#.to_vec(), 422, "name"),
        ("200-character name", Method::POST, "/api/agents".into(), &token, format!(r#"{{"name": "{}"}}"#, "a".repeat(200)).into_bytes(), 422, "name"),
        ("not a DNS label", Method::POST, "/api/agents".into(), &token, br#"{"name": "Dev Box"}"#.to_vec(), 422, "name"),
        ("account token naming an account", Method::POST, "/api/agents".into(), &token, format!(r#"{{"name": "a", "account_id": "{account}"}}"#).into_bytes(), 422, "account_id"),
        ("unknown account", Method::POST, "/api/agents".into(), &h.operator, br#"{"name": "a", "account_id": "acc_01JDQ6V9X8RTS5N0Z5G8K2M4PQ"}"#.to_vec(), 422, "account_id"),
        ("operator without account", Method::POST, "/api/agents".into(), &h.operator, br#"{"name": "a"}"#.to_vec(), 422, "account_id"),
        ("transfer to the same account", Method::POST, format!("/api/agents/{agent}/transfer"), &h.operator, format!(r#"{{"to_account": "{account}"}}"#).into_bytes(), 422, "to_account"),
        ("transfer to an unknown account", Method::POST, format!("/api/agents/{agent}/transfer"), &h.operator, br#"{"to_account": "acc_nope"}"#.to_vec(), 422, "to_account"),
        ("transfer with a wrong type", Method::POST, format!("/api/agents/{agent}/transfer"), &h.operator, br#"{"to_account": 7}"#.to_vec(), 422, "to_account"),
        ("empty account name", Method::POST, "/api/accounts".into(), &h.operator, br#"{"name": ""}"#.to_vec(), 422, "name"),
        ("200-character account name", Method::POST, "/api/accounts".into(), &h.operator, format!(r#"{{"name": "{}"}}"#, "a".repeat(200)).into_bytes(), 422, "name"),
        ("token for an unknown account", Method::POST, "/api/accounts/acc_nope/tokens".into(), &h.operator, br"{}".to_vec(), 404, ""),
        ("image with a bad digest", Method::POST, "/api/images".into(), &h.operator, br#"{"version": "v2", "agent_version": "1", "manifest_digest": "md5:x", "refs": {"local": "x"}}"#.to_vec(), 422, "manifest_digest"),
        ("image for an unknown provider", Method::POST, "/api/images".into(), &h.operator, format!(r#"{{"version": "v2", "agent_version": "1", "manifest_digest": "{DIGEST}", "refs": {{"aws": "ami-1"}}}}"#).into_bytes(), 422, "refs.aws"),
        ("fly image by tag", Method::POST, "/api/images".into(), &h.operator, format!(r#"{{"version": "v2", "agent_version": "1", "manifest_digest": "{DIGEST}", "refs": {{"fly": "registry.fly.io/a:latest"}}}}"#).into_bytes(), 422, "refs.fly"),
        ("bad env name", Method::POST, "/api/images".into(), &h.operator, format!(r#"{{"version": "v2", "agent_version": "1", "manifest_digest": "{DIGEST}", "refs": {{"local": "x"}}, "env": {{"lower": "x"}}}}"#).into_bytes(), 422, "env.lower"),
        ("duplicate release", Method::POST, "/api/images".into(), &h.operator, format!(r#"{{"version": "2026.11.0", "agent_version": "1", "manifest_digest": "{DIGEST}", "refs": {{"local": "x"}}}}"#).into_bytes(), 409, ""),
    ];
    for (what, method, path, bearer, body, status, field) in cases {
        let reply = h.raw(method, &path, Some(bearer), &json_header, body).await;
        let field = (!field.is_empty()).then_some(field);
        reply.problem(status, field);
        assert_eq!(h.snapshot().await, before, "{what} changed the database");
    }

    let queries = [
        ("/api/agents?limit=0", "limit"),
        ("/api/agents?limit=ten", "limit"),
        ("/api/agents?colour=red", "colour"),
        ("/api/usage?from=2026-11-20", "to"),
        ("/api/usage?from=2026-11-21&to=2026-11-20", "to"),
        ("/api/usage?from=2026-13-01&to=2026-11-20", "from"),
        ("/api/usage?from=2025-01-01&to=2026-11-20", "to"),
        ("/api/audit?cursor=abc", "cursor"),
        ("/api/audit?limit=9999", "limit"),
    ];
    for (path, field) in queries {
        h.get(path, &token).await.problem(422, Some(field));
    }
    let window =
        format!("/api/agents/{agent}/timeline?from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z");
    h.get(&window, &token).await.problem(422, Some("to"));
    let not_an_instant = format!("/api/agents/{agent}/timeline?from=yesterday");
    h.get(&not_an_instant, &token)
        .await
        .problem(422, Some("from"));

    let text = h
        .raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &[("content-type", "text/plain".to_owned())],
            b"name=a".to_vec(),
        )
        .await;
    text.problem(415, None);
    let huge = format!(r#"{{"name": "{}"}}"#, "a".repeat(100 * 1024));
    h.raw(
        Method::POST,
        "/api/agents",
        Some(&token),
        &json_header,
        huge.into_bytes(),
    )
    .await
    .problem(413, None);
    h.call(Method::PATCH, "/api/agents", Some(&token), None)
        .await
        .problem(405, None);
    h.call(Method::GET, "/api/nothing-here", Some(&token), None)
        .await
        .problem(404, None);
    assert_eq!(h.snapshot().await, before, "nothing changed");
}

async fn agents_keep_their_image_pin(db: TestDb) {
    let h = Harness::new(db).await;
    let first = h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let old = h.agent(&token, "old-box").await;
    let pinned = h.get(&format!("/api/agents/{old}"), &token).await;
    assert_eq!(pinned.body["image"]["image_id"], first.as_str());
    assert_eq!(
        pinned.body["image"]["env"],
        json!({"PLATFORM_RELEASE": "2026.11.0"})
    );
    assert_eq!(
        (
            pinned.body["outdated"].clone(),
            pinned.body["upgrade_note"].clone()
        ),
        (json!(false), Value::Null)
    );

    h.advance(1_000);
    let second = h.release("2026.12.0").await;
    let outdated = h.get(&format!("/api/agents/{old}"), &token).await;
    assert_eq!(outdated.body["outdated"], true);
    assert_eq!(outdated.body["upgrade_note"], control_api::UPGRADE_NOTE);
    assert_eq!(
        outdated.body["image"]["image_id"],
        first.as_str(),
        "pushing a release changes no pin"
    );

    // A restart boots the pinned image, never the newest.
    h.call(
        Method::POST,
        &format!("/api/agents/{old}/stop"),
        Some(&token),
        None,
    )
    .await;
    h.run_jobs().await;
    h.call(
        Method::POST,
        &format!("/api/agents/{old}/start"),
        Some(&token),
        None,
    )
    .await;
    h.run_jobs().await;
    let vm = h.local.vm(&old).unwrap();
    assert_eq!(
        (vm.running, vm.image_ref.as_str(), vm.boots),
        (true, "local-2026.11.0", 2)
    );
    let restarted = h.get(&format!("/api/agents/{old}"), &token).await;
    assert_eq!(restarted.body["state"], "running");
    assert_eq!(restarted.body["last_error"], Value::Null);

    let new = h.agent(&token, "new-box").await;
    let fresh = h.get(&format!("/api/agents/{new}"), &token).await;
    assert_eq!(fresh.body["image"]["image_id"], second.as_str());
    assert_eq!(fresh.body["image"]["reference"], "local-2026.12.0");
    assert_eq!(fresh.body["outdated"], false);

    let images = h.get("/api/images", &h.operator).await;
    let current: Vec<_> = images.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["current"].clone())
        .collect();
    assert_eq!(
        current,
        [json!(true), json!(false)],
        "newest first, the newest current"
    );
}

async fn transfer_splits_the_ledger_at_its_instant(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (alice_account, alice) = h.account("Alice").await;
    let (bob_account, bob) = h.account("Bob").await;
    let agent = h.agent(&alice, "shared-box").await;

    h.advance(7_200_000);
    let at = h.now();
    let moved = h
        .post(
            &format!("/api/agents/{agent}/transfer"),
            &h.operator,
            json!({"to_account": bob_account}),
        )
        .await;
    assert_eq!(moved.status, 200, "{:#}", moved.body);
    assert_eq!(moved.body["account_id"], bob_account.as_str());
    assert_eq!(
        moved.body["state"], "running",
        "same state on the other side"
    );

    h.advance(3_600_000);
    let everything = h
        .get(&format!("/api/agents/{agent}/timeline"), &h.operator)
        .await;
    let periods = everything.body["periods"].as_array().unwrap();
    let boundary: Vec<_> = periods.iter().filter(|p| p["state"] == "running").collect();
    assert_eq!(boundary.len(), 2);
    assert_eq!(
        (
            boundary[0]["account_id"].as_str(),
            boundary[0]["ended_at"].as_str()
        ),
        (Some(alice_account.as_str()), Some(at.to_string().as_str()))
    );
    assert_eq!(
        (
            boundary[1]["account_id"].as_str(),
            boundary[1]["started_at"].as_str()
        ),
        (Some(bob_account.as_str()), Some(at.to_string().as_str()))
    );

    let bobs_view = h.get(&format!("/api/agents/{agent}/timeline"), &bob).await;
    assert_eq!(
        bobs_view.body["periods"].as_array().unwrap().len(),
        1,
        "Bob sees his own periods only"
    );
    h.get(&format!("/api/agents/{agent}"), &alice)
        .await
        .problem(404, None);

    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    let day = h.now().day();
    let usage = |token: String| {
        let h = &h;
        async move {
            h.get(&format!("/api/usage?from={day}&to={day}"), &token)
                .await
                .body["rows"]
                .clone()
        }
    };
    let alices = usage(alice.clone()).await;
    let bobs = usage(bob.clone()).await;
    assert_eq!(
        alices[0]["resource_id"],
        agent.as_str(),
        "Alice keeps her usage after the transfer"
    );
    assert_eq!(alices[0]["running_s"], 7_200);
    assert_eq!(bobs[0]["running_s"], 3_600);

    for token in [&alice, &bob] {
        let audit = h
            .get(&format!("/api/audit?resource_id={agent}"), token)
            .await;
        let transfer = audit.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "agent.transfer")
            .cloned();
        let transfer = transfer.expect("both sides see the transfer");
        assert_eq!(transfer["at"], at.to_string());
        assert_eq!(
            (
                transfer["account_id"].as_str(),
                transfer["to_account_id"].as_str()
            ),
            (Some(alice_account.as_str()), Some(bob_account.as_str()))
        );
    }
}

async fn operator_endpoints_refuse_account_tokens(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (account, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev-box").await;
    let before = h.snapshot().await;
    let forbidden = [
        (
            Method::POST,
            "/api/accounts".to_owned(),
            Some(json!({"name": "Evil"})),
        ),
        (
            Method::POST,
            format!("/api/accounts/{account}/tokens"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/images".to_owned(),
            Some(
                json!({"version": "x", "agent_version": "1", "manifest_digest": DIGEST, "refs": {"local": "x"}}),
            ),
        ),
        (Method::GET, "/api/images".to_owned(), None),
        (
            Method::PUT,
            "/api/images/current".to_owned(),
            Some(json!({"image_id": "img_x"})),
        ),
        (Method::GET, "/api/audit/verify".to_owned(), None),
        (
            Method::POST,
            format!("/api/agents/{agent}/transfer"),
            Some(json!({"to_account": account})),
        ),
    ];
    for (method, path, body) in forbidden {
        h.call(method, &path, Some(&token), body)
            .await
            .problem(403, None);
    }
    assert_eq!(h.snapshot().await, before);
    let verdict = h.get("/api/audit/verify", &h.operator).await;
    assert_eq!(
        (
            verdict.body["ok"].clone(),
            verdict.body["events_checked"].clone()
        ),
        (json!(true), json!(1))
    );
}

async fn tokens_are_checked(db: TestDb) {
    let h = Harness::new(db).await;
    let missing = h.call(Method::GET, "/api/agents", None, None).await;
    missing.problem(401, None);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let mut forged = h.operator.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    h.get("/api/agents", &forged).await.problem(401, None);
    h.get("/api/agents", "ctl_tok_01JDQ6V9X8RTS5N0Z5G8K2M4PQ_0000000000000000000000000000000000000000000000000000000000000000").await.problem(401, None);
    h.get("/api/agents", "not-a-token").await.problem(401, None);
    let basic = h
        .raw(
            Method::GET,
            "/api/agents",
            None,
            &[("authorization", "Basic dXNlcjpwYXNz".to_owned())],
            Vec::new(),
        )
        .await;
    basic.problem(401, None);
    assert_eq!(h.get("/api/agents", &h.operator).await.status, 200);
    // The scheme is case-insensitive (RFC 7235).
    let lower = h
        .raw(
            Method::GET,
            "/api/agents",
            None,
            &[("authorization", format!("bearer {}", h.operator))],
            Vec::new(),
        )
        .await;
    assert_eq!(lower.status, 200, "{:#}", lower.body);
    for open in ["/healthz", "/readyz", "/api/openapi.json"] {
        assert_eq!(
            h.call(Method::GET, open, None, None).await.status,
            200,
            "{open}"
        );
    }
}

async fn conflicting_operations_are_refused(db: TestDb) {
    let h = Harness::new(db).await;
    let (_, token) = h.account("Acme").await;
    let no_image = h
        .post("/api/agents", &token, json!({"name": "early"}))
        .await;
    no_image.problem(409, None);
    assert!(
        no_image.body["detail"]
            .as_str()
            .unwrap()
            .contains("PUT /api/images/current")
    );

    h.release("2026.11.0").await;
    let accepted = h
        .post("/api/agents", &token, json!({"name": "dev-box"}))
        .await;
    let id = accepted.body["id"].as_str().unwrap().to_owned();
    let start = format!("/api/agents/{id}/start");
    let busy = h.call(Method::POST, &start, Some(&token), None).await;
    assert!(
        busy.problem(409, None)["detail"]
            .as_str()
            .unwrap()
            .contains("provisioning in progress")
    );
    h.run_jobs().await;
    let running = h.call(Method::POST, &start, Some(&token), None).await;
    assert!(
        running.problem(409, None)["detail"]
            .as_str()
            .unwrap()
            .contains("already running")
    );
    h.delete(&format!("/api/agents/{id}"), &token).await;
    h.run_jobs().await;
    let gone = h
        .call(
            Method::POST,
            &format!("/api/agents/{id}/stop"),
            Some(&token),
            None,
        )
        .await;
    assert!(
        gone.problem(409, None)["detail"]
            .as_str()
            .unwrap()
            .contains("destroyed")
    );
    let moved = h
        .post(
            &format!("/api/agents/{id}/transfer"),
            &h.operator,
            json!({"to_account": h.account("B").await.0}),
        )
        .await;
    moved.problem(409, None);
}

/// Follows `next_cursor` from `first` to the last page; returns `key` of every item.
async fn all_pages(h: &Harness, token: &str, first: &str, key: &str) -> Vec<Value> {
    let mut values = Vec::new();
    let mut path = first.to_owned();
    loop {
        let page = h.get(&path, token).await;
        values.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item[key].clone()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => path = format!("{first}&cursor={next}"),
            None => return values,
        }
    }
}

async fn listings_page(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let mut made = Vec::new();
    for n in 0..5 {
        made.push(h.agent(&token, &format!("box-{n}")).await);
    }
    let ids = all_pages(&h, &token, "/api/agents?limit=2", "id").await;
    let seen: Vec<_> = ids
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, made, "every Agent once, in creation order");
    let events = all_pages(&h, &token, "/api/audit?limit=2", "seq").await;
    assert_eq!(events, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn openapi_document_matches_routes_and_committed_file() {
    let committed_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let generated = control::http::openapi_json();
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "control/openapi.json is out of date with the routes; regenerate it with\n  cargo run -p control -- openapi > control/openapi.json"
    );

    // Every documented operation is routed, and no other method is on a documented path.
    let h = Harness::new(TestDb::sqlite()).await;
    let document: Value = serde_json::from_str(&generated).unwrap();
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ");
        for method in &methods {
            let documented = item.get(method.as_str().to_lowercase()).is_some();
            let reply = h
                .call(method.clone(), &concrete, Some(&h.operator), None)
                .await;
            let routed = reply.status != 405
                && reply.body["detail"] != "no such endpoint; see /api/openapi.json";
            assert_eq!(
                routed, documented,
                "{method} {path}: routed {routed}, documented {documented}"
            );
        }
    }
    let served = h.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(served.body, document);
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let h = Harness::new(TestDb::sqlite()).await;
    assert_eq!(
        h.call(Method::GET, "/readyz", None, None).await.body["status"],
        "ok"
    );
    h.app.store.close().await;
    let down = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        down.problem(503, None)["detail"],
        "the database does not answer"
    );
    assert_eq!(
        h.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
}

/// Log lines written while the guard lives on this thread.
/// The INFO lines this test process logged, from a global subscriber installed on first use:
/// a scoped one misses what runs on the runtime's other worker threads, and tracing's caches
/// of which callsites are enabled are shared by every test in the process. Tests pick their
/// own lines out by the ids they made.
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        buffer
    })
    .clone()
}

struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A caller's `X-Request-Id` is theirs: ours is new for every request and is what the
/// answer, its problem document, the log and the audit log carry as `request_id`; the
/// caller's is kept beside it (`caller_request_id`), so a caller cannot make two requests
/// share an id in our records.
async fn a_callers_request_id_is_kept_beside_ours(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let logs = capture_logs();
    let send = |path: &'static str, body: &'static str| {
        let h = &h;
        let token = token.clone();
        async move {
            h.raw(
                Method::POST,
                path,
                Some(&token),
                &[
                    ("content-type", "application/json".to_owned()),
                    ("x-request-id", "caller-chosen-1".to_owned()),
                ],
                body.as_bytes().to_vec(),
            )
            .await
        }
    };
    let first = send("/api/agents", r#"{"name":"dev"}"#).await;
    let second = send("/api/agents", r#"{"name":"dev2"}"#).await;
    let refused = send("/api/agents", r#"{"name":""}"#).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (202, 202));
    let ours: Vec<&str> = [&first, &second, &refused]
        .iter()
        .map(|reply| reply.header("x-request-id").unwrap())
        .collect();
    for id in &ours {
        assert!(id.starts_with("req_"), "{ours:?}");
    }
    assert!(
        ours[0] != ours[1] && ours[1] != ours[2],
        "one id per request: {ours:?}"
    );
    // The problem document names our id too (`problem` checks it matches the header).
    refused.problem(422, Some("name"));

    let id = first.body["id"].as_str().unwrap();
    let audit = h.get(&format!("/api/audit?resource_id={id}"), &token).await;
    let event = &audit.body["items"][0];
    assert_eq!(event["request_id"], ours[0], "{event:#}");
    assert_eq!(
        event["details"]["caller_request_id"], "caller-chosen-1",
        "{event:#}"
    );
    // Without the header, the details carry no caller id.
    let quiet = h.post("/api/agents", &token, json!({"name": "dev3"})).await;
    let quiet_id = quiet.body["id"].as_str().unwrap();
    let audit = h
        .get(&format!("/api/audit?resource_id={quiet_id}"), &token)
        .await;
    assert!(
        audit.body["items"][0]["details"]
            .get("caller_request_id")
            .is_none()
    );

    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|line| line.contains("agent provisioning accepted") && line.contains(id))
        .unwrap_or_else(|| panic!("no provisioning line for {id} in:\n{logs}"));
    assert!(
        line.contains(&format!("request_id={}", ours[0]))
            && line.contains("caller_request_id=caller-chosen-1"),
        "{line}"
    );
    assert!(
        !logs
            .replace("caller_request_id=", "")
            .contains("request_id=caller-chosen-1"),
        "the caller's id was logged as ours:\n{logs}"
    );
}
