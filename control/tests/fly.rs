//! control's Fly client against the Fly fake (`tests/provider-fakes`): machines as servers
//! (ids `<app>/<machine>`, Fly's states onto ours), start and stop through Fly's `wait`,
//! listing by our labels kept in machine metadata, destroy (machine, volumes, app) twice, and
//! Fly's errors as the dashboard will see them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use control::clock::SystemClock;
use control::providers::Providers;
use control::providers::fly::{Fly, FlyConfig};
use control::providers::http::RetryPolicy;
use control::providers::{ErrorKind, KIND_LABEL, Labels, Secret, ServerStatus, Servers};
use provider_fakes::fly::{FlyFake, MachineState, Method, Options};
use serde_json::{Value, json};
use test_support::TestDb;

const IMAGE: &str =
    "registry.fly.io/agent@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn fake() -> FlyFake {
    FlyFake::start(Options {
        transition_delay: Duration::from_millis(50),
        ..Options::default()
    })
    .await
    .unwrap()
}

fn config(fake: &FlyFake) -> FlyConfig {
    let mut config = FlyConfig::new(Secret(fake.token().to_owned()), fake.org_slug());
    config.base_url = fake.url();
    config.wait_timeout = Duration::from_secs(2);
    config.retry = RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_wait: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    config
}

fn client(fake: &FlyFake) -> Fly {
    Fly::new(config(fake), Arc::new(SystemClock)).unwrap()
}

#[tokio::test]
async fn a_machine_is_started_stopped_and_destroyed_with_its_volume_and_app() {
    let fake = fake().await;
    let fly = client(&fake);
    let planted = fake
        .control()
        .plant("legacy-a", IMAGE, MachineState::Stopped, &[]);
    let id = format!("legacy-a/{}", planted.machine_id);

    let server = fly.get_server(&id).await.unwrap().unwrap();
    assert_eq!(server.status, ServerStatus::Off);
    assert_eq!(server.image, IMAGE);

    fly.power_on(&id).await.unwrap();
    assert_eq!(
        fly.get_server(&id).await.unwrap().unwrap().status,
        ServerStatus::Running,
        "power_on waits for started"
    );
    fly.power_on(&id).await.unwrap();
    assert_eq!(
        fake.control()
            .calls(&Method::POST, "/v1/apps/{app}/machines/{machine}/start"),
        1,
        "a started machine is not started again"
    );

    fly.shutdown(&id).await.unwrap();
    let machine = fake.control().machine(&planted.machine_id).unwrap();
    assert_eq!(machine.state, MachineState::Stopped);
    assert_eq!(machine.last_signal.as_deref(), Some("SIGTERM"));
    fly.power_on(&id).await.unwrap();
    fly.power_off(&id).await.unwrap();
    let machine = fake.control().machine(&planted.machine_id).unwrap();
    assert_eq!(
        (machine.state, machine.last_signal.as_deref()),
        (MachineState::Stopped, Some("SIGKILL"))
    );

    fly.delete_server(&id).await.unwrap();
    assert!(fake.control().live_machines().is_empty());
    assert!(fake.control().volumes().is_empty());
    assert!(fake.control().apps().is_empty());
    assert_eq!(fly.get_server(&id).await.unwrap(), None);
    fly.delete_server(&id).await.unwrap();
    assert_eq!(fly.get_server("no-slash").await.unwrap(), None);
}

#[tokio::test]
async fn listing_finds_labelled_machines_across_apps_a_page_of_apps_at_a_time() {
    let fake = fake().await;
    let fly = client(&fake);
    let control = fake.control();
    let mut labelled = Vec::new();
    for i in 0..3 {
        let p = control.plant(&format!("legacy-{i}"), IMAGE, MachineState::Started, &[]);
        if i < 2 {
            let labels = control::providers::resource_labels(
                control_api::usage::ResourceKind::Agent,
                &format!("agt_{i}"),
            );
            fly.label(&p.app, &p.machine_id, &labels).await.unwrap();
            labelled.push(format!("{}/{}", p.app, p.machine_id));
        }
    }
    control.reset_calls();
    let selector = Labels::from([(KIND_LABEL.to_owned(), "agent".to_owned())]);
    let page = fly.list_servers(&selector, None).await.unwrap();
    let mut ids: Vec<String> = page.items.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, labelled);
    assert_eq!(page.next, None);
    assert!(page.items.iter().all(|s| s.status == ServerStatus::Running));
    assert_eq!(page.items[0].labels["control/id"], "agt_0");
    assert_eq!(
        control.calls_total(),
        4,
        "one call for the apps, one per app"
    );
}

#[tokio::test]
async fn flys_errors_reach_the_caller_with_flys_words() {
    let fake = fake().await;
    let fly = client(&fake);
    let control = fake.control();
    let planted = control.plant("legacy-e", IMAGE, MachineState::Started, &[]);
    let id = format!("legacy-e/{}", planted.machine_id);
    control.fail_next(
        &Method::POST,
        "/v1/apps/{app}/machines/{machine}/stop",
        1,
        422,
        "",
        "invalid signal",
    );
    let e = fly.shutdown(&id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("invalid signal"), "{e}");

    control.fail_next(
        &Method::GET,
        "/v1/apps/{app}/machines/{machine}",
        5,
        503,
        "",
        "flaps unavailable",
    );
    control.reset_calls();
    let e = fly.get_server(&id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("flaps unavailable"), "{e}");
    assert_eq!(
        control.calls(&Method::GET, "/v1/apps/{app}/machines/{machine}"),
        3,
        "a GET is tried again as the policy says"
    );
    control.clear_faults();

    let wrong = Fly::new(
        FlyConfig {
            token: Secret("wrong".to_owned()),
            ..config(&fake)
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let e = wrong.get_server(&id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("unauthorized"), "{e}");

    control.set_transition_delay(Duration::from_secs(30));
    control.set_rate_limit(1000, 1000);
    fly.shutdown(&id).await.unwrap();
    assert_eq!(
        fly.get_server(&id).await.unwrap().unwrap().status,
        ServerStatus::Stopping,
        "a wait that times out leaves the state to the job's next look"
    );
    let e = fly.delete_server("legacy-e/unknown").await;
    assert!(e.is_ok(), "an unknown machine is gone already: {e:?}");
    assert_eq!(
        control.live_machines().len(),
        1,
        "another machine of the app stays"
    );
    assert_eq!(control.volumes().len(), 1, "with its volume");
    assert_eq!(control.apps().len(), 1, "and its app");
}

/// A control plane whose default cloud is the local one, with the fake's organization as the
/// legacy Fly cohort, a current release and an account.
async fn harness(fake: &FlyFake) -> (common::Harness, String) {
    let fly = Arc::new(client(fake));
    let h = common::Harness::with_providers(
        TestDb::sqlite(),
        |local| Providers::new(control::providers::local::cloud(local.clone())).with_fly(fly),
        control::app::Settings {
            stop_grace: Duration::from_millis(10),
            ..control::app::Settings::default()
        },
    )
    .await;
    h.release("2026.12.0").await;
    let (account, _) = h.account("Legacy").await;
    (h, account)
}

fn import_body(account: &str, p: &provider_fakes::fly::Planted) -> Value {
    json!({
        "account_id": account,
        "name": "legacy-one",
        "app": p.app,
        "machine_id": p.machine_id,
        "volume_id": p.volume_id,
        "image": IMAGE,
    })
}

/// Import a running legacy Agent; stop it, start it, destroy it through the ordinary jobs;
/// nothing is left in the fake, and the audit log says the provision was an adoption.
#[tokio::test]
async fn an_imported_agents_life_on_fly_leaves_nothing_behind() {
    let fake = fake().await;
    let (h, account) = harness(&fake).await;
    let planted = fake
        .control()
        .plant("legacy-one", IMAGE, MachineState::Started, &[]);
    let imported = h
        .post(
            "/api/agents/import",
            &h.operator,
            import_body(&account, &planted),
        )
        .await;
    assert_eq!(imported.status, 201, "{:#}", imported.body);
    assert_eq!(imported.body["provider"], "fly");
    assert_eq!(imported.body["state"], "running");
    let agent = imported.body["id"].as_str().unwrap().to_owned();
    let machine = fake.control().machine(&planted.machine_id).unwrap();
    assert_eq!(machine.metadata["control_id"], agent);
    assert_eq!(machine.metadata["control_kind"], "agent");

    let again = h
        .post(
            "/api/agents/import",
            &h.operator,
            import_body(&account, &planted),
        )
        .await;
    again.problem(409, None);

    let audit = h
        .get(&format!("/api/audit?resource_id={agent}"), &h.operator)
        .await;
    assert_eq!(audit.status, 200, "{:#}", audit.body);
    let text = audit.body.to_string();
    assert!(text.contains("\"adopted\":true"), "{text}");

    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &h.operator, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    h.run_jobs_until(&agent, "paused").await;
    assert_eq!(
        fake.control().machine(&planted.machine_id).unwrap().state,
        MachineState::Stopped
    );
    let start = h
        .post(
            &format!("/api/agents/{agent}/start"),
            &h.operator,
            json!({}),
        )
        .await;
    assert_eq!(start.status, 202, "{:#}", start.body);
    h.run_jobs_until(&agent, "running").await;
    assert_eq!(
        fake.control().machine(&planted.machine_id).unwrap().state,
        MachineState::Started
    );
    let destroy = h.delete(&format!("/api/agents/{agent}"), &h.operator).await;
    assert_eq!(destroy.status, 202, "{:#}", destroy.body);
    h.run_jobs_until(&agent, "destroyed").await;
    assert!(fake.control().live_machines().is_empty());
    assert!(fake.control().volumes().is_empty());
    assert!(fake.control().apps().is_empty());
}

/// Bad input, a machine Fly does not have, Fly refusing or failing, a caller who is not an
/// operator: each a problem naming the cause, and nothing recorded or labelled.
#[tokio::test]
async fn a_refused_import_changes_nothing() {
    let fake = fake().await;
    let (h, account) = harness(&fake).await;
    let planted = fake
        .control()
        .plant("legacy-two", IMAGE, MachineState::Stopped, &[]);
    let (_, account_token) = h.account("Other").await;
    let before = h.snapshot().await;
    let with = |key: &str, value: &str| {
        let mut body = import_body(&account, &planted);
        body[key] = json!(value);
        body
    };
    let import = |token: &str, body: serde_json::Value| {
        let token = token.to_owned();
        let h = &h;
        async move { h.post("/api/agents/import", &token, body).await }
    };
    for (key, value) in [
        ("image", "registry.fly.io/agent:latest"),
        ("machine_id", "0000dead"),
        ("volume_id", "vol_other"),
    ] {
        import(&h.operator, with(key, value))
            .await
            .problem(422, Some(key));
    }

    // Fly refusing (401) is a 502; Fly failing is not a refusal: 503, to be repeated later.
    let control = fake.control();
    let machine_route = "/v1/apps/{app}/machines/{machine}";
    for (status, times, message) in [(401, 1, "unauthorized"), (503, 5, "flaps is down")] {
        control.fail_next(&Method::GET, machine_route, times, status, "", message);
        let answer = import(&h.operator, import_body(&account, &planted)).await;
        let problem = answer.problem(if status == 401 { 502 } else { 503 }, None);
        assert!(
            problem["detail"].as_str().unwrap().contains(message),
            "{problem:#}"
        );
        assert_eq!(answer.header("retry-after").is_some(), status == 503);
    }
    control.clear_faults();

    import(&account_token, import_body(&account, &planted))
        .await
        .problem(403, None);

    assert_eq!(h.snapshot().await, before, "nothing recorded");
    let machine = control.machine(&planted.machine_id).unwrap();
    assert!(
        machine.metadata.is_empty(),
        "nothing labelled: {:?}",
        machine.metadata
    );

    let imported = h
        .post(
            "/api/agents/import",
            &h.operator,
            import_body(&account, &planted),
        )
        .await;
    assert_eq!(imported.status, 201, "{:#}", imported.body);
    assert_eq!(
        imported.body["state"], "paused",
        "a stopped machine is paused"
    );
}
