//! `POST /api/agents/{id}/clone` in process, on SQLite and PostgreSQL, against the in-memory
//! local provider (which keeps a slice's copy as a record of where it came from): the clone
//! is a new Agent on the current release with its own ledger; a running source is stopped for
//! the copy and put back, a stopped one stays stopped; each refusal changes nothing; the
//! ledger invariants hold for both Agents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use common::Harness;
use control::store::{AuditFilter, NewAgent};
use control_api::agents::PeriodState;
use serde_json::{Value, json};
use test_support::{TestDb, dual_backend_tests};

dual_backend_tests!(
    a_clone_copies_a_running_source_which_is_put_back_running,
    a_stopped_source_stays_stopped,
    refusals_change_nothing,
    a_retried_clone_makes_one_clone,
);

async fn view(h: &Harness, id: &str) -> Value {
    h.get(&format!("/api/agents/{id}"), &h.operator).await.body
}

async fn events(h: &Harness, id: &str) -> Vec<Value> {
    let events = h
        .get(&format!("/api/audit?resource_id={id}"), &h.operator)
        .await;
    assert_eq!(events.status, 200, "{:#}", events.body);
    events.body["items"].as_array().unwrap().clone()
}

/// The periods of Agent `id`, as `(state, started_at)`.
async fn periods(h: &Harness, id: &str) -> Vec<(String, String)> {
    let timeline = h
        .get(&format!("/api/agents/{id}/timeline"), &h.operator)
        .await;
    assert_eq!(timeline.status, 200, "{:#}", timeline.body);
    timeline.body["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["state"].as_str().unwrap().to_owned(),
                p["started_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A harness with an account, its token and a running Agent `dev` on release 2026.11.0, then
/// 2026.12.0 made current.
async fn setup(db: TestDb) -> (Harness, String, String) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("acme").await;
    let source = h.agent(&token, "dev").await;
    h.run_jobs_until(&source, "running").await;
    h.advance(60_000);
    h.release("2026.12.0").await;
    (h, token, source)
}

async fn a_clone_copies_a_running_source_which_is_put_back_running(db: TestDb) {
    let (h, token, source) = setup(db).await;
    let before = view(&h, &source).await;
    assert_eq!(before["outdated"], true);
    let boots = h.local.vm(&source).unwrap().boots;

    let cloned = h
        .post(&format!("/api/agents/{source}/clone"), &token, json!({}))
        .await;
    assert_eq!(cloned.status, 202, "{:#}", cloned.body);
    let clone = cloned.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        cloned.header("location"),
        Some(format!("/api/agents/{clone}").as_str())
    );
    assert_eq!(cloned.body["name"], "dev-clone");
    assert_eq!(cloned.body["account_id"], before["account_id"]);
    assert_eq!(cloned.body["image"]["version"], "2026.12.0");
    assert_eq!(cloned.body["outdated"], false);
    assert_eq!(cloned.body["cloned_from"], source.as_str());
    assert_eq!(cloned.body["state"], "paused");
    assert_eq!(cloned.body["operation"], "provision");
    let accepted_at = cloned.body["provisioned_at"].as_str().unwrap().to_owned();
    assert_eq!(
        accepted_at,
        h.now().to_string(),
        "provisioned when accepted"
    );

    // Until the clone is made, the source waits: no start, stop, destroy or second clone.
    let source_now = view(&h, &source).await;
    assert_eq!(source_now["cloning_to"], clone.as_str());
    for (path, body) in [
        (format!("/api/agents/{source}/stop"), json!({})),
        (format!("/api/agents/{source}/clone"), json!({})),
    ] {
        let refused = h.post(&path, &token, body).await;
        assert_eq!(refused.status, 409, "{path}: {:#}", refused.body);
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(detail.contains("being cloned into"), "{detail}");
    }
    let refused = h.delete(&format!("/api/agents/{source}"), &token).await;
    assert_eq!(refused.status, 409, "{:#}", refused.body);

    h.run_jobs_until(&clone, "running").await;
    let made = view(&h, &clone).await;
    assert_eq!(made["state"], "running");
    assert!(made["last_error"].is_null(), "{made:#}");
    // The copy came from the source's VM, made while it was off; the source runs again.
    assert_eq!(
        h.local.vm(&clone).unwrap().slice_from.as_deref(),
        Some(source.as_str())
    );
    let after = view(&h, &source).await;
    assert_eq!(after["state"], "running", "{after:#}");
    assert!(after["operation"].is_null() && after["cloning_to"].is_null());
    assert_eq!(after["image"], before["image"], "the source keeps its pin");
    let vm = h.local.vm(&source).unwrap();
    assert!(vm.running);
    assert_eq!(
        vm.boots,
        boots + 1,
        "stopped once for the copy, started once"
    );

    // The source's ledger: running now (its stop and start for the copy happened at one
    // instant of this test's clock, so they left no period; the end-to-end test sees it); the
    // clone's starts at its own provisioning.
    let source_periods = periods(&h, &source).await;
    assert_eq!(source_periods.last().unwrap().0, "running");
    let clone_periods = periods(&h, &clone).await;
    assert_eq!(clone_periods[0].1, accepted_at, "{clone_periods:?}");
    assert_eq!(clone_periods.last().unwrap().0, "running");
    assert!(source_periods[0].1 < accepted_at);

    // One agent.clone on each, naming the other.
    let on_source = events(&h, &source).await;
    let event = on_source
        .iter()
        .find(|e| e["action"] == "agent.clone")
        .unwrap_or_else(|| panic!("no agent.clone on the source: {on_source:#?}"));
    assert_eq!(event["details"]["clone_id"], clone.as_str());
    assert_eq!(event["details"]["state"], "running");
    let on_clone = events(&h, &clone).await;
    let actions: Vec<&str> = on_clone
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["agent.clone"]);
    assert_eq!(on_clone[0]["details"]["source_id"], source.as_str());
    assert_eq!(
        on_source
            .iter()
            .filter(|e| e["action"] == "agent.clone")
            .count(),
        1
    );

    // Free again: the source may be stopped now.
    let stop = h
        .post(&format!("/api/agents/{source}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    h.run_jobs_until(&source, "paused").await;
    h.advance(3_600_000);
    h.ledger_holds("after a clone").await;
}

async fn a_stopped_source_stays_stopped(db: TestDb) {
    let (h, token, source) = setup(db).await;
    let stop = h
        .post(&format!("/api/agents/{source}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    h.run_jobs_until(&source, "paused").await;
    let boots = h.local.vm(&source).unwrap().boots;
    let source_periods = periods(&h, &source).await;

    let cloned = h
        .post(
            &format!("/api/agents/{source}/clone"),
            &token,
            json!({"name": "copy"}),
        )
        .await;
    assert_eq!(cloned.status, 202, "{:#}", cloned.body);
    assert_eq!(cloned.body["name"], "copy");
    let clone = cloned.body["id"].as_str().unwrap().to_owned();
    h.run_jobs_until(&clone, "running").await;

    let vm = h.local.vm(&source).unwrap();
    assert!(!vm.running, "the stopped source was started");
    assert_eq!(vm.boots, boots);
    assert_eq!(view(&h, &source).await["state"], "paused");
    assert_eq!(periods(&h, &source).await, source_periods);
    let event = events(&h, &source)
        .await
        .into_iter()
        .find(|e| e["action"] == "agent.clone")
        .unwrap();
    assert_eq!(event["details"]["state"], "paused");
    h.advance(90_000_000); // across a UTC midnight
    h.ledger_holds("after cloning a stopped agent").await;
}

/// A request that must be refused with `status`, leaving the store as it was.
async fn refused(h: &Harness, token: &str, id: &str, body: Value, status: u16, words: &str) {
    let before = h.snapshot().await;
    let reply = h
        .post(&format!("/api/agents/{id}/clone"), token, body.clone())
        .await;
    assert_eq!(reply.status, status, "{body}: {:#}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let detail = reply.body.to_string();
    assert!(detail.contains(words), "{words:?} not in {detail}");
    assert_eq!(
        h.snapshot().await,
        before,
        "a refused clone changed the store"
    );
}

async fn refusals_change_nothing(db: TestDb) {
    let (h, token, source) = setup(db).await;
    let (_, other) = h.account("other").await;

    refused(&h, &token, "agt_nonexistent", json!({}), 404, "not found").await;
    refused(&h, &other, &source, json!({}), 404, "not found").await;
    refused(
        &h,
        &token,
        &source,
        json!({"name": "Bad_Name"}),
        422,
        "name",
    )
    .await;
    refused(&h, &token, &source, json!({"nom": "x"}), 422, "nom").await;
    // The default name does not fit the name rules: a name is asked for.
    let long = h.agent(&token, &"a".repeat(60)).await;
    h.run_jobs_until(&long, "running").await;
    refused(&h, &token, &long, json!({}), 422, "longer than 63").await;

    // Mid-job: a stop under way.
    let stop = h
        .post(&format!("/api/agents/{source}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202);
    refused(&h, &token, &source, json!({}), 409, "stop in progress").await;
    h.run_jobs_until(&source, "paused").await;

    // A legacy Fly Agent.
    let fly = control::ids::new_id(control::ids::prefix::AGENT);
    let fly = fly.as_str();
    {
        let mut tx = h.app.store.write().await.unwrap();
        let agent = tx.agent(&source).await.unwrap().unwrap();
        tx.insert_imported_agent(
            &NewAgent {
                id: fly,
                account_id: &agent.account_id,
                name: "legacy",
                provider: "fly",
                image_id: &agent.image_id,
                image_ref: "registry.fly.io/agent@sha256:00",
                env: "{}",
                provisioned_at: h.now().as_millis(),
                cloned_from: None,
            },
            "machine-1",
            PeriodState::Running,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    refused(
        &h,
        &token,
        fly,
        json!({}),
        409,
        "no Hetzner server can attach",
    )
    .await;

    // No image for the local provider in the current release: as provisioning answers.
    h.release_with("2027.1.0", json!({"hetzner": "1234"})).await;
    refused(
        &h,
        &token,
        &source,
        json!({}),
        409,
        "no image for provider local",
    )
    .await;
    h.release("2027.2.0").await;

    // Destroyed.
    let gone = h.delete(&format!("/api/agents/{source}"), &token).await;
    assert_eq!(gone.status, 202, "{:#}", gone.body);
    refused(&h, &token, &source, json!({}), 409, "destroy in progress").await;
    h.run_jobs_until(&source, "destroyed").await;
    refused(&h, &token, &source, json!({}), 409, "is destroyed").await;

    let filter = AuditFilter {
        limit: 1000,
        ..AuditFilter::default()
    };
    let all = h
        .app
        .store
        .read()
        .await
        .unwrap()
        .audit_events(&filter)
        .await
        .unwrap();
    assert!(all.iter().all(|e| e.action != "agent.clone"));
}

async fn a_retried_clone_makes_one_clone(db: TestDb) {
    let (h, token, source) = setup(db).await;
    let path = format!("/api/agents/{source}/clone");
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("idempotency-key", "clone-1".to_owned()),
    ];
    let call = || {
        h.raw(
            axum::http::Method::POST,
            &path,
            Some(&token),
            &headers,
            json!({"name": "twin"}).to_string().into_bytes(),
        )
    };
    let first = call().await;
    assert_eq!(first.status, 202, "{:#}", first.body);
    let again = call().await;
    assert_eq!(again.status, 202, "{:#}", again.body);
    assert_eq!(again.body["id"], first.body["id"]);
    let clone = first.body["id"].as_str().unwrap().to_owned();
    h.run_jobs_until(&clone, "running").await;
    let third = call().await;
    assert_eq!(third.body["id"], first.body["id"]);
    let list = h.get("/api/agents", &token).await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev", "twin"]);
}
