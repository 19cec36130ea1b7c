//! control's Hetzner client against the Hetzner fake (`tests/provider-fakes`): each capability,
//! Hetzner's errors as the dashboard will see them, the request budget, the preflight of a
//! placement (the configured one, or a Plain VM's own type, location and image), and a whole
//! Agent's life (firewall, volume, server; stop; destroy) run by the job runner — with every
//! answer the fake gave checked against Hetzner's OpenAPI schemas at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use control::clock::SystemClock;
use control::providers::hetzner::{self, Hetzner, HetznerConfig};
use control::providers::http::RetryPolicy;
use control::providers::{
    Cloud, ErrorKind, FirewallRule, FirewallSpec, Firewalls, Labels, Placement, ProviderError,
    Providers, Secret, ServerSpec, ServerStatus, Servers, VolumeSpec, Volumes, resource_labels,
};
use control_api::usage::ResourceKind;
use provider_fakes::hetzner::{HetznerFake, Method, Options, schema};
use serde_json::json;
use test_support::TestDb;

async fn fake() -> HetznerFake {
    HetznerFake::start(Options {
        action_delay: Duration::from_millis(20),
        ..Options::default()
    })
    .await
    .unwrap()
}

fn client(fake: &HetznerFake) -> Hetzner {
    let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
    config.base_url = fake.url();
    config.action_poll = Duration::from_millis(10);
    config.retry = RetryPolicy {
        attempts: 4,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_wait: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    };
    Hetzner::new(config, Arc::new(SystemClock)).unwrap()
}

fn spec(id: &str, image: &str) -> ServerSpec {
    ServerSpec {
        name: id.replace('_', "-"),
        image: image.to_owned(),
        server_type: None,
        location: None,
        labels: resource_labels(ResourceKind::Agent, id),
        user_data: Some(Secret("#cloud-config\n{}\n".to_owned())),
        firewall_ids: Vec::new(),
        volume_ids: Vec::new(),
    }
}

async fn eventually_status(h: &Hetzner, id: &str, status: ServerStatus) {
    for _ in 0..200 {
        if h.get_server(id).await.unwrap().map(|s| s.status) == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server {id} never {status:?}");
}

#[tokio::test]
async fn servers_are_created_found_by_label_powered_and_deleted() {
    let fake = fake().await;
    let h = client(&fake);
    let image = "114690387"; // debian-12 in the fake's catalogue
    let created = h.create_server(&spec("agt_a", image)).await.unwrap();
    assert_eq!(created.name, "agt-a");
    assert!(created.ipv4.is_some() && created.ipv6.is_some());
    let again = h.create_server(&spec("agt_a", image)).await.unwrap_err();
    assert_eq!(
        (again.kind, again.code.as_deref()),
        (ErrorKind::Conflict, Some("uniqueness_error"))
    );
    eventually_status(&h, &created.id, ServerStatus::Running).await;

    // 55 more, then a lookup by label a page (50) at a time.
    let mut shared = Labels::new();
    shared.insert("control/kind".to_owned(), "agent".to_owned());
    for n in 0..55 {
        h.create_server(&spec(&format!("agt_{n}"), image))
            .await
            .unwrap();
    }
    let first = h.list_servers(&shared, None).await.unwrap();
    assert_eq!(first.items.len(), 50);
    let second = h
        .list_servers(&shared, first.next.as_deref())
        .await
        .unwrap();
    assert_eq!((second.items.len(), second.next), (6, None));
    let mine = h
        .list_servers(&resource_labels(ResourceKind::Agent, "agt_a"), None)
        .await
        .unwrap();
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].id, created.id);

    h.shutdown(&created.id).await.unwrap();
    eventually_status(&h, &created.id, ServerStatus::Off).await;
    h.shutdown(&created.id).await.unwrap(); // off already: nothing to do
    h.power_on(&created.id).await.unwrap();
    eventually_status(&h, &created.id, ServerStatus::Running).await;
    h.power_off(&created.id).await.unwrap();
    eventually_status(&h, &created.id, ServerStatus::Off).await;
    h.delete_server(&created.id).await.unwrap();
    for _ in 0..200 {
        if h.get_server(&created.id).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(h.get_server(&created.id).await.unwrap().is_none());
    assert_eq!(
        h.delete_server(&created.id).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert!(h.get_server("not-a-hetzner-id").await.unwrap().is_none());
    schema::assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn firewalls_and_volumes_follow_hetzners_rules() {
    let fake = fake().await;
    let h = client(&fake);
    let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
    let firewall = h
        .create_firewall(&FirewallSpec {
            name: "pvm-1".to_owned(),
            labels: labels.clone(),
            rules: Vec::new(),
        })
        .await
        .unwrap();
    let ssh = FirewallRule {
        direction: control::providers::Direction::In,
        protocol: "tcp".to_owned(),
        port: Some("22".to_owned()),
        source_ips: vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()],
        destination_ips: Vec::new(),
        description: Some("ssh".to_owned()),
    };
    h.set_rules(&firewall.id, std::slice::from_ref(&ssh))
        .await
        .unwrap();
    let read = h.get_firewall(&firewall.id).await.unwrap().unwrap();
    assert_eq!(read.rules, vec![ssh]);
    assert_eq!(
        h.list_firewalls(&labels, None).await.unwrap().items[0].id,
        firewall.id
    );

    let volume = h
        .create_volume(&VolumeSpec {
            name: "pvm-1-data".to_owned(),
            size_gb: 10,
            location: None,
            labels: labels.clone(),
            format: Some("ext4".to_owned()),
        })
        .await
        .unwrap();
    assert_eq!(volume.size_gb, 10);
    let mut server = spec("pvm_1", "114690387");
    server.labels = labels.clone();
    server.firewall_ids = vec![firewall.id.clone()];
    server.volume_ids = vec![volume.id.clone()];
    let server = h.create_server(&server).await.unwrap();
    let applied = h.get_firewall(&firewall.id).await.unwrap().unwrap();
    assert_eq!(applied.servers, vec![server.id.clone()]);
    // In use while the server lives: transient, so a destroy job waits and tries again.
    let busy = h.delete_firewall(&firewall.id).await.unwrap_err();
    assert_eq!(busy.kind, ErrorKind::Transient, "{busy}");
    assert_eq!(
        h.get_volume(&volume.id).await.unwrap().unwrap().server,
        Some(server.id.clone())
    );
    schema::assert_answers_match_spec(fake.control());
}

#[tokio::test]
async fn hetzners_errors_reach_the_caller_clearly_and_transient_ones_are_retried() {
    let fake = fake().await;
    let h = client(&fake);
    let control = fake.control();
    control.fail_next(&Method::GET, "/v1/servers/{id}", 2, 503, "unavailable");
    assert!(
        h.get_server("1").await.unwrap().is_none(),
        "two 503s, then 404"
    );
    assert_eq!(control.calls(&Method::GET, "/v1/servers/{id}"), 3);

    let mut bad = spec("agt_b", "114690387");
    bad.server_type = Some("cx99".to_owned());
    let refused = h.create_server(&bad).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Permanent);
    assert_eq!(refused.code.as_deref(), Some("invalid_input"));
    assert!(refused.message.contains("server_type"), "{refused}");

    control.fail_next(
        &Method::POST,
        "/v1/servers",
        1,
        403,
        "resource_limit_exceeded",
    );
    let quota = h
        .create_server(&spec("agt_c", "114690387"))
        .await
        .unwrap_err();
    assert_eq!(
        (quota.kind, quota.code.as_deref()),
        (ErrorKind::Permanent, Some("resource_limit_exceeded"))
    );
    // A POST that may have acted is not repeated by the client: one call.
    control.fail_next(&Method::POST, "/v1/servers", 1, 503, "unavailable");
    let calls = control.calls(&Method::POST, "/v1/servers");
    assert_eq!(
        h.create_server(&spec("agt_d", "114690387"))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Transient
    );
    assert_eq!(control.calls(&Method::POST, "/v1/servers"), calls + 1);

    // The budget spent: the client waits no longer than its policy and hands back how long
    // Hetzner asked for, for the job runner to schedule.
    control.set_rate_limit(3, 0.0);
    let mut limited = None;
    for _ in 0..5 {
        if let Err(e) = h.get_server("1").await {
            limited = Some(e);
            break;
        }
    }
    let limited = limited.expect("the budget ran out");
    assert_eq!(limited.kind, ErrorKind::RateLimited, "{limited}");
    assert!(limited.retry_after.is_some(), "{limited:?}");
    schema::assert_answers_match_spec(fake.control());
}

/// A whole Agent on Hetzner, run by the job runner: firewall (no rule), volume, server with
/// both and its cloud-init; running; stopped; destroyed — and nothing left in the project.
#[tokio::test]
async fn an_agents_life_on_hetzner_leaves_nothing_behind() {
    let fake = fake().await;
    let hetzner = client(&fake);
    let providers = Providers::new(hetzner::cloud(Arc::new(hetzner.clone())));
    let h = common::Harness::with_providers(
        TestDb::sqlite(),
        |_| providers,
        control::app::Settings::default(),
    )
    .await;
    h.release_with(
        "2026.12.0",
        json!({"hetzner": "114690387", "local": "local-2026.12.0"}),
    )
    .await;
    let (_, token) = h.account("Acme").await;
    let provisioned = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(provisioned.status, 202, "{:#}", provisioned.body);
    assert_eq!(
        provisioned.body["provider"], "hetzner",
        "{:#}",
        provisioned.body
    );
    let agent = provisioned.body["id"].as_str().unwrap().to_owned();

    h.run_jobs_until(&agent, "running").await;
    let control = fake.control();
    let servers = control.servers();
    let (firewalls, volumes) = (control.firewalls(), control.volumes());
    assert_eq!((servers.len(), firewalls.len(), volumes.len()), (1, 1, 1));
    assert!(
        firewalls[0].rules.is_empty(),
        "an Agent has no inbound port"
    );
    assert_eq!(servers[0].firewalls, vec![firewalls[0].id]);
    assert_eq!(servers[0].volumes, vec![volumes[0].id]);
    assert!(
        servers[0]
            .user_data
            .as_deref()
            .is_some_and(|u| u.starts_with("#cloud-config")),
        "the first-boot document"
    );

    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    h.run_jobs_until(&agent, "paused").await;
    assert_eq!(control.servers()[0].status, "off");

    let destroy = h.delete(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(destroy.status, 202, "{:#}", destroy.body);
    h.run_jobs_until(&agent, "destroyed").await;
    assert!(control.servers().is_empty());
    assert!(control.volumes().is_empty());
    assert!(control.firewalls().is_empty());
    // The server's deletion was followed to its end, so the volume and the firewall were
    // free to go at the first try (not refused `resource_in_use` and retried).
    assert_eq!(control.calls(&Method::DELETE, "/v1/volumes/{id}"), 1);
    assert_eq!(control.calls(&Method::DELETE, "/v1/firewalls/{id}"), 1);
    schema::assert_answers_match_spec(control);
}

/// The reconciler reads power states by label, 50 servers a call: a pass over 60 Agents costs
/// two calls, never one per Agent.
#[tokio::test]
async fn a_reconciler_pass_costs_a_call_per_fifty_agents() {
    let fake = fake().await;
    let hetzner = client(&fake);
    let providers = Providers::new(Cloud {
        name: hetzner::NAME,
        servers: Arc::new(hetzner.clone()),
        firewalls: None,
        volumes: None,
        slices: None,
    });
    let h = common::Harness::with_providers(
        TestDb::sqlite(),
        |_| providers,
        control::app::Settings::default(),
    )
    .await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    for n in 0..60 {
        let made = h
            .post("/api/agents", &token, json!({"name": format!("dev{n}")}))
            .await;
        assert_eq!(made.status, 202, "{:#}", made.body);
    }
    for _ in 0..50 {
        h.run_jobs().await;
        let agents = h.get("/api/agents?limit=200", &h.operator).await.body;
        let busy = agents["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| !a["operation"].is_null())
            .count();
        if busy == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.advance(6_000);
    }
    let control = fake.control();
    assert_eq!(control.servers().len(), 60);
    control.reset_calls();
    control::background::reconcile(&h.app, Duration::from_mins(1))
        .await
        .unwrap();
    assert_eq!(control.calls(&Method::GET, "/v1/servers"), 2);
    assert_eq!(control.calls(&Method::GET, "/v1/servers/{id}"), 0);
    assert_eq!(control.calls_total(), 2);
}

/// A Hetzner project at the fake with `server_type` and `location` configured, and a harness
/// whose current release's Hetzner image is `image`.
async fn configured(
    fake: &HetznerFake,
    server_type: &str,
    location: &str,
    image: &str,
) -> common::Harness {
    let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
    config.base_url = fake.url();
    config.server_type = server_type.to_owned();
    config.location = location.to_owned();
    config.action_poll = Duration::from_millis(10);
    config.retry = RetryPolicy {
        attempts: 2,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(20),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    };
    let hetzner = Arc::new(Hetzner::new(config, Arc::new(SystemClock)).unwrap());
    let providers = Providers::new(hetzner::cloud(hetzner));
    let h = common::Harness::with_providers(
        TestDb::sqlite(),
        |_| providers,
        control::app::Settings::default(),
    )
    .await;
    h.release_with("2026.12.0", json!({"hetzner": image})).await;
    h
}

/// What Hetzner cannot do as configured, or cannot answer at all, reaches the caller of
/// `POST /api/agents` as problem+json naming the cause, and nothing is recorded or made.
#[tokio::test]
async fn a_provisioning_hetzner_cannot_serve_is_refused_at_once_with_the_cause() {
    let cases = [
        ("cx99", "fsn1", "114690387", 502, "server type \"cx99\""),
        ("cx22", "mars1", "114690387", 502, "location \"mars1\""),
        (
            "cx22",
            "ash",
            "114690387",
            502,
            "does not offer server type \"cx22\" in location \"ash\"",
        ),
        ("cx22", "fsn1", "999999999", 502, "no image \"999999999\""),
    ];
    for (server_type, location, image, status, cause) in cases {
        let fake = fake().await;
        let h = configured(&fake, server_type, location, image).await;
        let (_, token) = h.account("Acme").await;
        let before = h.snapshot().await;
        let refused = h.post("/api/agents", &token, json!({"name": "dev"})).await;
        assert_eq!(refused.status, status, "{:#}", refused.body);
        assert_eq!(
            refused.header("content-type"),
            Some("application/problem+json")
        );
        let detail = refused.body["detail"].as_str().unwrap();
        assert!(
            detail.contains("hetzner")
                && detail.contains(cause)
                && detail.contains("nothing was recorded"),
            "{detail}"
        );
        assert_eq!(h.snapshot().await, before, "nothing recorded");
        let control = fake.control();
        assert_eq!(control.calls(&Method::POST, "/v1/servers"), 0);
        assert!(control.servers().is_empty() && control.firewalls().is_empty());
        schema::assert_answers_match_spec(control);
    }

    // A 5xx storm: 503 with Retry-After, nothing recorded; once Hetzner answers again the
    // same request is accepted, and the check it passed is not repeated for the next.
    let fake = fake().await;
    let h = configured(&fake, "cx22", "fsn1", "114690387").await;
    let (_, token) = h.account("Acme").await;
    let control = fake.control();
    control.fail_next(&Method::GET, "/v1/server_types", 10, 503, "unavailable");
    let before = h.snapshot().await;
    let storm = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(storm.status, 503, "{:#}", storm.body);
    assert!(storm.header("retry-after").is_some());
    assert!(
        storm.body["detail"]
            .as_str()
            .unwrap()
            .contains("hetzner is not answering"),
        "{:#}",
        storm.body
    );
    assert_eq!(h.snapshot().await, before, "nothing recorded");
    control.clear_faults();
    let made = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    let checks = control.calls(&Method::GET, "/v1/server_types");
    let again = h.post("/api/agents", &token, json!({"name": "dev2"})).await;
    assert_eq!(again.status, 202, "{:#}", again.body);
    assert_eq!(
        control.calls(&Method::GET, "/v1/server_types"),
        checks,
        "a passed check is remembered"
    );
}

/// A provisioning Hetzner refuses only when the server is created (the project's server quota
/// is spent) ends with the Agent paused, Hetzner's own words in `last_error` for the
/// dashboard, and nothing left at Hetzner: the firewall and volume made before the refusal
/// are released before the failure is recorded. Destroying the Agent then has nothing to
/// delete.
#[tokio::test]
async fn a_refused_provisioning_leaves_a_paused_agent_with_the_cause_and_nothing_billed() {
    let fake = fake().await;
    let h = configured(&fake, "cx22", "fsn1", "114690387").await;
    let control = fake.control();
    control.fail_next(
        &Method::POST,
        "/v1/servers",
        1,
        403,
        "resource_limit_exceeded",
    );
    let (_, token) = h.account("Acme").await;
    let made = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    let agent = made.body["id"].as_str().unwrap().to_owned();
    h.run_jobs_until(&agent, "paused").await;
    let view = h.get(&format!("/api/agents/{agent}"), &token).await.body;
    assert_eq!(
        (&view["state"], &view["operation"]),
        (&json!("paused"), &json!(null)),
        "{view:#}"
    );
    let cause = view["last_error"].as_str().unwrap();
    assert!(
        cause.contains("hetzner") && cause.contains("resource_limit_exceeded"),
        "{cause}"
    );
    assert!(cause.contains("what it had made is released"), "{cause}");
    assert!(control.servers().is_empty(), "no half-made server");
    assert!(
        control.firewalls().is_empty() && control.volumes().is_empty(),
        "nothing made before the refusal is left"
    );
    assert_eq!(control.calls(&Method::DELETE, "/v1/volumes/{id}"), 1);
    assert_eq!(control.calls(&Method::DELETE, "/v1/firewalls/{id}"), 1);

    // Hetzner has no call that tells the quota beforehand, so the refusal is remembered: the
    // next provisioning is refused at once with Hetzner's words, nothing recorded or made.
    let before = h.snapshot().await;
    let refused = h.post("/api/agents", &token, json!({"name": "dev2"})).await;
    assert_eq!(refused.status, 502, "{:#}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("resource_limit_exceeded") && detail.contains("nothing was recorded"),
        "{detail}"
    );
    assert_eq!(h.snapshot().await, before, "nothing recorded");
    assert_eq!(
        control.calls(&Method::POST, "/v1/servers"),
        1,
        "no create tried"
    );
    // A server deleted (here one made by hand in the project) frees the quota again.
    let other = Hetzner::new(
        {
            let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
            config.base_url = fake.url();
            config
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let spare = other
        .create_server(&spec("agt_spare", "114690387"))
        .await
        .unwrap();
    let hetzner_of_h = h.app.providers.default_cloud().servers.clone();
    hetzner_of_h.delete_server(&spare.id).await.unwrap();
    let accepted = h.post("/api/agents", &token, json!({"name": "dev2"})).await;
    assert_eq!(accepted.status, 202, "{:#}", accepted.body);

    let destroy = h.delete(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(destroy.status, 202, "{:#}", destroy.body);
    h.run_jobs().await;
    let view = h.get(&format!("/api/agents/{agent}"), &token).await.body;
    assert_eq!(view["state"], "destroyed", "{view:#}");
    schema::assert_answers_match_spec(control);
}

/// Every server is asked for with a public IPv4 and IPv6 outright (not left to Hetzner's
/// defaults), and comes back with both.
#[tokio::test]
async fn a_server_is_created_with_public_ipv4_and_ipv6() {
    let fake = fake().await;
    let h = client(&fake);
    let mut plain = spec("pvm_1", "debian-12");
    plain.labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
    plain.server_type = Some("cpx11".to_owned());
    plain.location = Some("ash".to_owned());
    let created = h.create_server(&plain).await.unwrap();
    let sent = fake.control().servers();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].public_net,
        Some((Some(true), Some(true))),
        "public_net as sent"
    );
    assert_eq!(
        (sent[0].server_type.as_str(), sent[0].location.as_str()),
        ("cpx11", "ash")
    );
    let ipv4: std::net::Ipv4Addr = created.ipv4.as_deref().unwrap().parse().unwrap();
    let ipv6 = created.ipv6.clone().unwrap();
    assert!(ipv6.ends_with("/64"), "{ipv6}");
    let found = h.get_server(&created.id).await.unwrap().unwrap();
    assert_eq!(
        (found.ipv4.as_deref(), found.ipv6.as_deref()),
        (Some(ipv4.to_string().as_str()), Some(ipv6.as_str()))
    );
    schema::assert_answers_match_spec(fake.control());
}

/// A Hetzner client at the fake configured with `server_type` and `location`.
fn configured_client(fake: &HetznerFake, server_type: &str, location: &str) -> Hetzner {
    let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
    config.base_url = fake.url();
    server_type.clone_into(&mut config.server_type);
    location.clone_into(&mut config.location);
    Hetzner::new(config, Arc::new(SystemClock)).unwrap()
}

async fn preflight(
    h: &Hetzner,
    image: &str,
    server_type: Option<&str>,
    location: Option<&str>,
) -> Result<(), ProviderError> {
    h.preflight(&Placement {
        image,
        server_type,
        location,
    })
    .await
}

/// A placement that names its own type, location and image (a Plain VM's) is checked as given,
/// images by name for the type's architecture; the check that passed is remembered for those
/// three only.
#[tokio::test]
async fn a_placement_of_the_callers_own_is_checked_as_given() {
    let fake = fake().await;
    let h = configured_client(&fake, "cx22", "fsn1");
    let control = fake.control();
    for (image, server_type, location) in [
        ("debian-12", Some("cpx11"), Some("ash")),
        ("ubuntu-24.04", Some("cax11"), Some("hel1")),
        ("debian-12", None, Some("nbg1")),
        ("ubuntu-24.04", Some("cpx11"), None),
        ("114690387", Some("cpx11"), Some("ash")),
        ("114690387", None, None),
    ] {
        preflight(&h, image, server_type, location)
            .await
            .unwrap_or_else(|e| panic!("{image} {server_type:?} {location:?}: {e}"));
    }
    assert_eq!(control.calls(&Method::GET, "/v1/images"), 4, "by name");
    assert_eq!(control.calls(&Method::GET, "/v1/images/{id}"), 2, "by id");

    // Remembered by all three: the same again costs nothing, another location a new check.
    control.reset_calls();
    preflight(&h, "debian-12", Some("cpx11"), Some("ash"))
        .await
        .unwrap();
    assert_eq!(control.calls_total(), 0);
    preflight(&h, "debian-12", Some("cpx11"), Some("fsn1"))
        .await
        .unwrap();
    assert_eq!(control.calls(&Method::GET, "/v1/locations"), 1);
    schema::assert_answers_match_spec(control);
}

/// What Hetzner does not have, or does not offer, among the values a placement gave is
/// refused naming that value's field (which the API answers as invalid input in that field);
/// the configured values are refused as before, naming the configuration key and no field.
#[tokio::test]
async fn a_refusal_names_the_field_the_caller_gave() {
    let fake = fake().await;
    let h = configured_client(&fake, "cx22", "fsn1");
    for (image, server_type, location, field, cause) in [
        (
            "debian-12",
            Some("cx99"),
            None,
            "server_type",
            "no server type \"cx99\"",
        ),
        (
            "debian-12",
            None,
            Some("mars1"),
            "location",
            "no location \"mars1\"",
        ),
        (
            "debian-12",
            Some("cx22"),
            Some("ash"),
            "server_type",
            "does not offer server type \"cx22\" in location \"ash\"",
        ),
        (
            "debian-12",
            None,
            Some("ash"),
            "location",
            "does not offer server type \"cx22\" in location \"ash\"",
        ),
        (
            "debian-13",
            Some("cpx11"),
            None,
            "image",
            "no image \"debian-13\"",
        ),
        ("999999999", None, None, "image", "no image \"999999999\""),
        ("0", None, None, "image", "no image \"0\""),
        ("", None, None, "image", "no image \"\""),
        // debian-12 for arm, on an x86 type.
        (
            "114690389",
            Some("cx22"),
            None,
            "image",
            "for server type \"cx22\"",
        ),
    ] {
        let refused = preflight(&h, image, server_type, location)
            .await
            .unwrap_err();
        let case = format!("{image:?} {server_type:?} {location:?}: {refused}");
        assert_eq!(
            (refused.kind, refused.field, refused.code.as_deref()),
            (ErrorKind::Permanent, Some(field), Some("invalid_input")),
            "{case}"
        );
        assert!(
            refused.message.contains(cause) && !refused.message.contains("configured"),
            "{case}"
        );
        let control::error::Error::Invalid(fields) =
            control::error::Error::provider("hetzner", &refused)
        else {
            panic!("{case}: not invalid input");
        };
        assert_eq!(fields[0].field, field, "{case}");
    }

    // The configured values: no field, the configuration key named, the provider's refusal.
    for (server_type, location, cause) in [
        (
            "cx99",
            "fsn1",
            "no server type \"cx99\" (configured as [hetzner] server_type)",
        ),
        (
            "cx22",
            "mars1",
            "no location \"mars1\" (configured as [hetzner] location)",
        ),
        (
            "cx22",
            "ash",
            "does not offer server type \"cx22\" in location \"ash\"",
        ),
    ] {
        let h = configured_client(&fake, server_type, location);
        let refused = preflight(&h, "114690387", None, None).await.unwrap_err();
        assert_eq!(
            (refused.kind, refused.field),
            (ErrorKind::Permanent, None),
            "{refused}"
        );
        assert!(refused.message.contains(cause), "{refused}");
        assert!(
            matches!(
                control::error::Error::provider("hetzner", &refused),
                control::error::Error::Provider(_)
            ),
            "{refused}"
        );
    }
    // A configured value wrong beside one the caller gave: the configured one names no field.
    let h = configured_client(&fake, "cx99", "fsn1");
    let refused = preflight(&h, "debian-12", None, Some("nbg1"))
        .await
        .unwrap_err();
    assert_eq!(refused.field, None, "{refused}");
    assert!(
        refused
            .message
            .contains("configured as [hetzner] server_type")
    );
    schema::assert_answers_match_spec(fake.control());
}
