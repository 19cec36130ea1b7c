//! What vm-agent calls: registration and heartbeats, the state and health control derives
//! from them, and the reconciler. In process, on SQLite and PostgreSQL, with a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::atomic::Ordering;

use axum::http::Method;
use common::{Harness, Reply};
use control::app::{App, Settings};
use control::providers::Servers;
use serde_json::{Value, json};
use test_support::{TestDb, dual_backend_tests};
use tower::ServiceExt;

dual_backend_tests!(
    a_spent_bootstrap_token_is_never_armed_again,
    only_an_operator_re_bootstraps_and_it_is_audited,
    an_operators_token_supersedes_every_earlier_one,
    an_agent_gets_a_closed_firewall_and_a_slice_volume_and_leaves_nothing,
    the_sweeper_finds_what_no_live_agent_owns,
    the_bootstrap_token_is_exchanged_once,
    heartbeats_need_the_agents_own_credential,
    a_heartbeat_records_a_paused_agent_running,
    silence_makes_a_running_agent_unhealthy_until_it_reports,
    a_restarted_control_gives_agents_a_grace_period,
    a_restart_long_after_the_old_replica_counts_the_grace_from_its_own_start,
    a_frozen_control_flags_no_agent_that_resumes_within_its_backoff,
    support_sees_the_newest_heartbeat_from_any_replica,
    liveness_is_written_once_per_twenty_heartbeats,
    a_new_boot_id_is_recorded_at_once,
    the_reconciler_records_what_the_provider_says,
    credentials_loaded_in_bulk_end_when_revoked_anywhere,
    a_burst_of_changes_is_read_again_only_while_a_late_commit_could_land,
);

const INTERVAL_MS: i64 = 30_000;

fn beat(agent_id: &str, boot_id: &str, sequence: u64, uptime_s: u64) -> Value {
    json!({
        "agent_id": agent_id,
        "boot_id": boot_id,
        "sequence": sequence,
        "agent_version": "0.1.0",
        "image_version": "2026.11.0",
        "agent_uptime_s": uptime_s,
        "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0, "crash_loop": false},
        "slice": {"state": "mounted", "free_bytes": 1000, "total_bytes": 2000},
        "host": {"cpus": 2, "load_centi": [1, 2, 3], "memory_total_bytes": 4, "memory_available_bytes": 2,
                 "root_free_bytes": 9, "uptime_s": 100}
    })
}

async fn heartbeat(h: &Harness, credential: &str, body: &Value) -> Reply {
    h.call(
        Method::POST,
        "/api/agent/v1/heartbeat",
        Some(credential),
        Some(body.clone()),
    )
    .await
}

/// Sends a heartbeat that must be taken in.
async fn accepted(h: &Harness, credential: &str, body: &Value) {
    let reply = heartbeat(h, credential, body).await;
    assert_eq!(reply.status, 200, "{:#}", reply.body);
}

async fn register(h: &Harness, agent_id: &str, token: &str) -> Reply {
    let body = json!({"agent_id": agent_id, "bootstrap_token": token, "boot_id": "boot-1",
                      "agent_version": "0.1.0", "image_version": "2026.11.0"});
    h.call(Method::POST, "/api/agent/v1/register", None, Some(body))
        .await
}

/// Provisions an Agent and registers its VM's agent; returns its id and credential.
async fn enrolled(h: &Harness, token: &str, name: &str) -> (String, String) {
    let agent = h.agent(token, name).await;
    let bootstrap = h
        .local
        .vm(&agent)
        .unwrap()
        .bootstrap_token
        .expect("the VM got a bootstrap token");
    let registered = register(h, &agent, &bootstrap).await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    (
        agent,
        registered.body["credential"].as_str().unwrap().to_owned(),
    )
}

async fn agent_view(h: &Harness, token: &str, id: &str) -> Value {
    h.get(&format!("/api/agents/{id}"), token).await.body
}

async fn setup(db: TestDb) -> (Harness, String) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    (h, token)
}

async fn the_bootstrap_token_is_exchanged_once(db: TestDb) {
    let (h, token) = setup(db).await;
    let agent = h.agent(&token, "dev").await;
    let other = h.agent(&token, "other").await;
    let bootstrap = h.local.vm(&agent).unwrap().bootstrap_token.unwrap();
    assert!(bootstrap.starts_with("agb_"));
    assert!(
        !h.snapshot().await.contains(&bootstrap),
        "only the token's hash is stored"
    );

    register(&h, &agent, "agb_wrong").await.problem(401, None);
    register(&h, &other, &bootstrap).await.problem(401, None);
    let first = register(&h, &agent, &bootstrap).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["heartbeat_interval_s"], 30);
    let credential = first.body["credential"].as_str().unwrap();
    assert!(credential.starts_with("agc_crd_"));
    assert!(
        !h.snapshot()
            .await
            .contains(&credential[credential.len() - 64..]),
        "only the credential's hash is stored"
    );
    let again = register(&h, &agent, &bootstrap).await;
    again.problem(401, None);
    accepted(&h, credential, &beat(&agent, "boot-1", 1, 5)).await;

    // An unused token expires.
    let bootstrap = h.local.vm(&other).unwrap().bootstrap_token.unwrap();
    h.advance(25 * 3_600_000);
    register(&h, &other, &bootstrap).await.problem(401, None);
}

/// Once the VM traded its token, no provisioning step may arm another: a token stolen from
/// (or replayed into) a later attempt would otherwise mint a second credential.
async fn a_spent_bootstrap_token_is_never_armed_again(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, _credential) = enrolled(&h, &token, "dev").await;
    let (fresh, hash) = control::ingest::new_bootstrap_token().unwrap();
    let now = h.now().as_millis();
    let mut tx = h.app.store.write().await.unwrap();
    let armed = tx
        .put_bootstrap(&agent, &hash, now, now + 3_600_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!armed, "a spent token was armed again");
    register(&h, &agent, &fresh).await.problem(401, None);
}

async fn only_an_operator_re_bootstraps_and_it_is_audited(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, old_credential) = enrolled(&h, &token, "dev").await;
    let old_token = h.local.vm(&agent).unwrap().bootstrap_token.unwrap();
    let path = format!("/api/agents/{agent}/bootstrap-token");

    // Refused without changing anything: an account token, a missing Agent, a destroyed one.
    let before = h.snapshot().await;
    h.post(&path, &token, json!({})).await.problem(403, None);
    h.post(
        "/api/agents/agt_01JZZZZZZZZZZZZZZZZZZZZZZZ/bootstrap-token",
        &h.operator,
        json!({}),
    )
    .await
    .problem(404, None);
    assert_eq!(h.snapshot().await, before);

    let issued = h.post(&path, &h.operator, json!({})).await;
    assert_eq!(issued.status, 201, "{:#}", issued.body);
    let fresh = issued.body["bootstrap_token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, old_token);
    assert!(issued.body["expires_at"].is_string());
    // The fact is audited, the secret is not: neither in the event nor anywhere stored.
    let events = h
        .get(&format!("/api/audit?resource_id={agent}"), &h.operator)
        .await;
    let event = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "agent.rebootstrap")
        .unwrap_or_else(|| panic!("no agent.rebootstrap event: {:#}", events.body));
    assert!(event["actor"].as_str().unwrap().starts_with("token:"));
    assert!(
        !h.snapshot().await.contains(&fresh),
        "the token is stored in clear"
    );

    // The old token stays spent; the new one registers once and ends the old credential.
    register(&h, &agent, &old_token).await.problem(401, None);
    let registered = register(&h, &agent, &fresh).await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    register(&h, &agent, &fresh).await.problem(401, None);
    let new_credential = registered.body["credential"].as_str().unwrap();
    heartbeat(&h, &old_credential, &beat(&agent, "boot-2", 1, 1))
        .await
        .problem(401, None);
    accepted(&h, new_credential, &beat(&agent, "boot-2", 1, 1)).await;

    // A destroyed Agent has no VM to bootstrap.
    let destroyed = h.delete(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(destroyed.status, 202, "{:#}", destroyed.body);
    h.run_jobs().await;
    let before = h.snapshot().await;
    h.post(&path, &h.operator, json!({}))
        .await
        .problem(409, None);
    assert_eq!(h.snapshot().await, before);
}

async fn an_operators_token_supersedes_every_earlier_one(db: TestDb) {
    let (h, token) = setup(db).await;
    let agent = h.agent(&token, "dev").await;
    let first = h.local.vm(&agent).unwrap().bootstrap_token.unwrap();
    // A provisioning retry armed a second token; the first stays good beside it...
    let (second, hash) = control::ingest::new_bootstrap_token().unwrap();
    let now = h.now().as_millis();
    let mut tx = h.app.store.write().await.unwrap();
    assert!(
        tx.put_bootstrap(&agent, &hash, now, now + 3_600_000)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    // ...until an operator issues a fresh one, which is then the only one.
    let issued = h
        .post(
            &format!("/api/agents/{agent}/bootstrap-token"),
            &h.operator,
            json!({}),
        )
        .await;
    assert_eq!(issued.status, 201, "{:#}", issued.body);
    register(&h, &agent, &first).await.problem(401, None);
    register(&h, &agent, &second).await.problem(401, None);
    let fresh = issued.body["bootstrap_token"].as_str().unwrap();
    assert_eq!(register(&h, &agent, fresh).await.status, 200);
}

/// Provisioning makes, where there are tunnels and on a cloud that has them, the Agent's own
/// tunnel, one firewall with no rule (zero inbound ports) and one ext4 slice volume, both
/// attached to the server; a firewall an attempt made before it died is adopted, not doubled;
/// destroying the Agent leaves none of them.
async fn an_agent_gets_a_closed_firewall_and_a_slice_volume_and_leaves_nothing(db: TestDb) {
    use control::providers::{
        FirewallSpec, Firewalls, Providers, Servers, Tunnels, Volumes, resource_labels,
    };
    use control_api::usage::ResourceKind;

    let h = common::Harness::with_providers(
        db,
        |local| {
            Providers::new(control::providers::local::cloud(local.clone()))
                .with_tunnels(local.clone())
        },
        control::app::Settings::default(),
    )
    .await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let provisioned = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(provisioned.status, 202, "{:#}", provisioned.body);
    let agent = provisioned.body["id"].as_str().unwrap().to_owned();
    let labels = resource_labels(ResourceKind::Agent, &agent);
    // An attempt that died after the provider made the firewall, before recording it.
    let orphan = h
        .local
        .create_firewall(&FirewallSpec {
            name: agent.replace('_', "-").to_ascii_lowercase(),
            labels: labels.clone(),
            rules: Vec::new(),
        })
        .await
        .unwrap();
    h.run_jobs().await;
    assert_eq!(agent_view(&h, &token, &agent).await["state"], "running");

    let firewalls = h.local.list_firewalls(&labels, None).await.unwrap().items;
    let volumes = h.local.list_volumes(&labels, None).await.unwrap().items;
    let servers = h.local.list_servers(&labels, None).await.unwrap().items;
    assert_eq!(firewalls.len(), 1, "{firewalls:?}");
    assert_eq!(firewalls[0].id, orphan.id, "adopted, not doubled");
    assert!(firewalls[0].rules.is_empty(), "no inbound rule at all");
    assert_eq!(firewalls[0].servers, vec![servers[0].id.clone()]);
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    assert_eq!(volumes[0].size_gb, 10);
    assert_eq!(volumes[0].server.as_deref(), Some(servers[0].id.as_str()));
    let tunnel_name = agent.replace('_', "-").to_ascii_lowercase();
    let tunnel = h.local.find_tunnel(&tunnel_name).await.unwrap();
    assert!(tunnel.is_some(), "the Agent's own tunnel");

    let destroyed = h.delete(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(destroyed.status, 202, "{:#}", destroyed.body);
    h.run_jobs().await;
    assert_eq!(agent_view(&h, &token, &agent).await["state"], "destroyed");
    assert!(
        h.local
            .list_servers(&labels, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        h.local
            .list_volumes(&labels, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        h.local
            .list_firewalls(&labels, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(h.local.find_tunnel(&tunnel_name).await.unwrap().is_none());
}

/// The sweeper reports (and, told to, removes) what carries our labels but no live Agent owns:
/// a firewall planted for an Agent that never existed, and a volume a destroyed Agent left;
/// a live Agent's resources are left alone.
async fn the_sweeper_finds_what_no_live_agent_owns(db: TestDb) {
    use control::providers::{FirewallSpec, Firewalls, VolumeSpec, Volumes, resource_labels};
    use control_api::usage::ResourceKind;

    let (h, token) = setup(db).await;
    let live = h.agent(&token, "live").await;
    let gone = h.agent(&token, "gone").await;
    let destroyed = h.delete(&format!("/api/agents/{gone}"), &token).await;
    assert_eq!(destroyed.status, 202);
    h.run_jobs().await;
    let planted = h
        .local
        .create_firewall(&FirewallSpec {
            name: "agt-never".to_owned(),
            labels: resource_labels(ResourceKind::Agent, "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"),
            rules: Vec::new(),
        })
        .await
        .unwrap();
    let left = h
        .local
        .create_volume(&VolumeSpec {
            name: "gone-slice-copy".to_owned(),
            size_gb: 10,
            location: None,
            labels: resource_labels(ResourceKind::Agent, &gone),
            format: None,
        })
        .await
        .unwrap();

    let every = std::time::Duration::from_hours(1);
    let found = control::background::sweep(&h.app, every, false)
        .await
        .unwrap();
    let mut ids: Vec<(&str, String, String)> = found
        .iter()
        .map(|o| (o.what, o.id.clone(), o.owner.clone()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            (
                "firewall",
                planted.id.clone(),
                "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ".to_owned()
            ),
            ("volume", left.id.clone(), gone.clone()),
        ],
        "the live Agent {live}'s resources are not orphans"
    );
    // Reported only: still there. Told to remove: gone, and the live Agent's stay.
    assert!(h.local.get_firewall(&planted.id).await.unwrap().is_some());
    h.advance(2 * 3_600_000); // past this replica's own sweep lease
    let removed = control::background::sweep(&h.app, every, true)
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    assert!(h.local.get_firewall(&planted.id).await.unwrap().is_none());
    assert!(h.local.get_volume(&left.id).await.unwrap().is_none());
    let labels = resource_labels(ResourceKind::Agent, &live);
    assert_eq!(
        h.local
            .list_volumes(&labels, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(agent_view(&h, &token, &live).await["state"], "running");
}

/// A refused heartbeat: (what, bearer, headers, body, status, field named).
type BadHeartbeat<'a> = (
    &'a str,
    Option<&'a str>,
    Vec<(&'a str, String)>,
    Vec<u8>,
    u16,
    Option<&'a str>,
);

async fn heartbeats_need_the_agents_own_credential(db: TestDb) {
    let (h, token) = setup(db).await;
    let (alpha, alpha_credential) = enrolled(&h, &token, "alpha").await;
    let (beta, beta_credential) = enrolled(&h, &token, "beta").await;
    accepted(&h, &alpha_credential, &beat(&alpha, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    let before = h.snapshot().await;

    let mut forged = alpha_credential.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let unknown = "agc_crd_01JDQ6V9X8RTS5N0Z5G8K2M4PQ_0000000000000000000000000000000000000000000000000000000000000000";
    let json = vec![("content-type", "application/json".to_owned())];
    let body = beat(&alpha, "b", 2, 35).to_string().into_bytes();
    let cases: Vec<BadHeartbeat> = vec![
        ("no credential", None, json.clone(), body.clone(), 401, None),
        (
            "a wrong secret",
            Some(&forged),
            json.clone(),
            body.clone(),
            401,
            None,
        ),
        (
            "an unknown credential",
            Some(unknown),
            json.clone(),
            body.clone(),
            401,
            None,
        ),
        (
            "a dashboard token",
            Some(&token),
            json.clone(),
            body.clone(),
            401,
            None,
        ),
        (
            "a stranger's malformed body",
            Some(unknown),
            json.clone(),
            b"{\"boot_id\": ".to_vec(),
            401,
            None,
        ),
        (
            "another Agent's credential",
            Some(&beta_credential),
            json.clone(),
            body.clone(),
            403,
            None,
        ),
        (
            "malformed JSON",
            Some(&alpha_credential),
            json.clone(),
            b"{\"boot_id\": ".to_vec(),
            400,
            Some("body"),
        ),
        (
            "a wrong type",
            Some(&alpha_credential),
            json.clone(),
            beat(&alpha, "b", 2, 35)
                .to_string()
                .replace("\"sequence\":2", "\"sequence\":\"two\"")
                .into_bytes(),
            422,
            Some("sequence"),
        ),
        (
            "a missing field",
            Some(&alpha_credential),
            json.clone(),
            br#"{"boot_id": "b"}"#.to_vec(),
            422,
            Some("sequence"),
        ),
        (
            "an oversized body",
            Some(&alpha_credential),
            json.clone(),
            format!("{{\"pad\": \"{}\"}}", "x".repeat(20 * 1024)).into_bytes(),
            413,
            None,
        ),
        (
            "not JSON",
            Some(&alpha_credential),
            vec![("content-type", "text/plain".to_owned())],
            body.clone(),
            415,
            None,
        ),
    ];
    for (what, bearer, headers, body, status, field) in cases {
        let reply = h
            .raw(
                Method::POST,
                "/api/agent/v1/heartbeat",
                bearer,
                &headers,
                body,
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{what}: {:#}", reply.body);
        reply.problem(status, field);
        h.app.ingest.flush(false).await.unwrap();
        assert_eq!(h.snapshot().await, before, "{what} changed the database");
    }
    let refused = h.app.ingest.stats.refused.load(Ordering::Relaxed);
    assert!(refused >= 5, "refusals are counted: {refused}");
    // The other Agents keep reporting undisturbed.
    accepted(&h, &beta_credential, &beat(&beta, "b", 1, 5)).await;

    // A destroyed Agent's credential is refused.
    h.delete(&format!("/api/agents/{alpha}"), &token).await;
    h.run_jobs().await;
    h.app.ingest.flush(false).await.unwrap();
    let destroyed = h.snapshot().await;
    heartbeat(&h, &alpha_credential, &beat(&alpha, "b", 3, 65))
        .await
        .problem(403, None);
    // Once the cached copy has expired, the revoked credential itself is refused.
    h.advance(2 * 60_000);
    heartbeat(&h, &alpha_credential, &beat(&alpha, "b", 4, 185))
        .await
        .problem(401, None);
    h.app.ingest.flush(false).await.unwrap();
    assert_eq!(
        h.snapshot().await,
        destroyed,
        "a revoked credential changed the database"
    );
}

async fn a_heartbeat_records_a_paused_agent_running(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    accepted(&h, &credential, &beat(&agent, "b", 1, 600)).await;
    h.call(
        Method::POST,
        &format!("/api/agents/{agent}/stop"),
        Some(&token),
        None,
    )
    .await;
    h.advance(1_000);
    h.run_jobs().await;
    assert_eq!(agent_view(&h, &token, &agent).await["state"], "paused");

    // The stopped process's last heartbeat, still in flight, changes nothing.
    h.advance(2_000);
    accepted(&h, &credential, &beat(&agent, "b", 2, 603)).await;
    assert_eq!(agent_view(&h, &token, &agent).await["state"], "paused");

    // Later, the VM turns out to be running after all (started outside control): from the
    // instant its heartbeat arrives, it is recorded running. No audit event: nobody asked.
    h.advance(120_000);
    let seen = h.now();
    accepted(&h, &credential, &beat(&agent, "b", 1, 10)).await;
    let view = agent_view(&h, &token, &agent).await;
    assert_eq!(view["state"], "running", "{view:#}");
    let timeline = h
        .get(&format!("/api/agents/{agent}/timeline"), &token)
        .await
        .body;
    let last = timeline["periods"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["state"].as_str(), last["started_at"].as_str()),
        (Some("running"), Some(seen.to_string().as_str()))
    );
    let audit = h
        .get(&format!("/api/audit?resource_id={agent}"), &token)
        .await
        .body;
    assert_eq!(
        audit["items"].as_array().unwrap().len(),
        2,
        "provision and stop only"
    );
}

async fn silence_makes_a_running_agent_unhealthy_until_it_reports(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    // A fresh replica waits out its grace period first.
    h.advance(4 * INTERVAL_MS);
    accepted(&h, &credential, &beat(&agent, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    let view = agent_view(&h, &token, &agent).await;
    assert_eq!(
        (view["healthy"].clone(), view["state"].as_str()),
        (json!(true), Some("running"))
    );
    assert!(view["last_heartbeat_at"].is_string());

    assert_eq!(
        judged_each_second(&h, &h.app, 2 * INTERVAL_MS).await,
        0,
        "two intervals of silence are fine"
    );
    let periods_before = h
        .get(&format!("/api/agents/{agent}/timeline"), &token)
        .await
        .body;
    assert_eq!(judged_each_second(&h, &h.app, INTERVAL_MS + 1_000).await, 1);
    let view = agent_view(&h, &token, &agent).await;
    assert_eq!(
        (view["healthy"].clone(), view["state"].as_str()),
        (json!(false), Some("running")),
        "a flag, not a period change"
    );
    assert_eq!(
        h.get(&format!("/api/agents/{agent}/timeline"), &token)
            .await
            .body,
        periods_before
    );
    assert_eq!(h.app.ingest.judge().await.unwrap(), 0, "flagged once");

    accepted(&h, &credential, &beat(&agent, "b", 2, 200)).await;
    assert_eq!(
        agent_view(&h, &token, &agent).await["healthy"],
        true,
        "healed at once"
    );
}

async fn a_restarted_control_gives_agents_a_grace_period(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    accepted(&h, &credential, &beat(&agent, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    h.app.ingest.judge_orphans().await.unwrap();

    // control restarts: a new replica on the same database, with nothing in memory.
    h.advance(20_000);
    let restarted = App::new(
        h.app.store.clone(),
        h.clock.clone(),
        control::providers::Providers::new(control::providers::local::cloud(h.local.clone())),
        Settings::default(),
    );
    restarted.ingest.judge_orphans().await.unwrap();
    h.advance(2 * INTERVAL_MS);
    assert_eq!(restarted.ingest.judge().await.unwrap(), 0);
    assert_eq!(
        restarted.ingest.judge_orphans().await.unwrap(),
        0,
        "the old replica's agents are in their grace period"
    );
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], true);

    // Still silent long after the new replica started (the silence limit plus the agents'
    // longest backoff): flagged by the new one.
    h.advance(5 * INTERVAL_MS + 300_000);
    assert_eq!(restarted.ingest.judge_orphans().await.unwrap(), 1);
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], false);
}

async fn liveness_is_written_once_per_twenty_heartbeats(db: TestDb) {
    let (h, token) = setup(db).await;
    let mut agents = Vec::new();
    for n in 0..5 {
        agents.push(enrolled(&h, &token, &format!("box-{n}")).await);
    }
    let written = || {
        h.app
            .ingest
            .stats
            .liveness_rows_written
            .load(Ordering::Relaxed)
    };
    // Each agent's first heartbeat claims custody (one row each).
    for (agent, credential) in &agents {
        accepted(&h, credential, &beat(agent, "b", 1, 5)).await;
    }
    h.app.ingest.flush(false).await.unwrap();
    let after_first = written();
    assert_eq!(after_first, 5);
    // Steady state: 200 heartbeats each, one interval apart, flushed every second as serve does.
    for round in 2..=201_u64 {
        h.advance(INTERVAL_MS);
        for (agent, credential) in &agents {
            accepted(&h, credential, &beat(agent, "b", round, round * 30)).await;
        }
        h.app.ingest.flush(false).await.unwrap();
    }
    let steady = written() - after_first;
    let beats = 5 * 200;
    assert!(
        steady * 20 <= beats,
        "{steady} rows for {beats} heartbeats: more than one per twenty"
    );
    assert!(
        steady >= beats / 20 - 5,
        "{steady} rows: liveness must still be written behind"
    );
    let row = h
        .app
        .store
        .read()
        .await
        .unwrap()
        .liveness(&agents[0].0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.sequence >= 181,
        "the row lags by less than twenty heartbeats: {}",
        row.sequence
    );
}

async fn a_new_boot_id_is_recorded_at_once(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    accepted(&h, &credential, &beat(&agent, "boot-a", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    let transitions = h.app.ingest.stats.transitions.load(Ordering::Relaxed);
    h.advance(INTERVAL_MS);
    accepted(&h, &credential, &beat(&agent, "boot-b", 1, 3)).await;
    // No flush: the reboot is written by the heartbeat itself.
    let row = h
        .app
        .store
        .read()
        .await
        .unwrap()
        .liveness(&agent)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.boot_id, "boot-b");
    assert_eq!(
        h.app.ingest.stats.transitions.load(Ordering::Relaxed),
        transitions + 1
    );
}

async fn the_reconciler_records_what_the_provider_says(db: TestDb) {
    let (h, token) = setup(db).await;
    let agent = h.agent(&token, "dev").await;
    let every = std::time::Duration::from_mins(1);
    assert_eq!(
        control::background::reconcile(&h.app, every).await.unwrap(),
        0,
        "they agree"
    );
    // The VM goes off behind control's back.
    h.local.shutdown(&agent).await.unwrap();
    h.advance(10_000);
    let noticed = h.now();
    assert_eq!(
        control::background::reconcile(&h.app, every).await.unwrap(),
        1
    );
    let timeline = h
        .get(&format!("/api/agents/{agent}/timeline"), &token)
        .await
        .body;
    let last = timeline["periods"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["state"].as_str(), last["started_at"].as_str()),
        (Some("paused"), Some(noticed.to_string().as_str()))
    );
    // And on again.
    h.local.power_on(&agent).await.unwrap();
    h.advance(10_000);
    assert_eq!(
        control::background::reconcile(&h.app, every).await.unwrap(),
        1
    );
    assert_eq!(agent_view(&h, &token, &agent).await["state"], "running");
    let verdict = control::audit::verify(&h.app.store).await.unwrap();
    assert!(verdict.ok);
}

/// A replica that starts loads every credential in force with its Agent's record, so the
/// first heartbeats after a restart read nothing alone. What is revoked afterwards (by an
/// Agent registering again, or destroyed) ends on the replica that revoked it at once and on
/// the others at their next load, or once their copy is older than `credential_ttl`; an Agent
/// enrolled after the load is heard all the same.
async fn credentials_loaded_in_bulk_end_when_revoked_anywhere(db: TestDb) {
    use control::ingest::IngestError;
    let (h, token) = setup(db).await;
    let (kept, kept_credential) = enrolled(&h, &token, "kept").await;
    let (rotated, old_credential) = enrolled(&h, &token, "rotated").await;
    let (doomed, doomed_credential) = enrolled(&h, &token, "doomed").await;
    accepted(&h, &old_credential, &beat(&rotated, "b", 1, 5)).await;

    // Another replica starts on the same database and loads them all.
    let other = App::new(
        h.app.store.clone(),
        h.clock.clone(),
        control::providers::Providers::new(control::providers::local::cloud(h.local.clone())),
        Settings::default(),
    );
    let loaded = other.ingest.preload_credentials().await.unwrap();
    assert_eq!((loaded.credentials, loaded.forgotten), (3, 0));
    let reads = || other.ingest.stats.credential_reads.load(Ordering::Relaxed);
    let on_other = |credential: &str, agent: &str, sequence: u64| {
        let beat = serde_json::from_value(beat(agent, "b", sequence, 5 + sequence)).unwrap();
        let ingest = other.ingest.clone();
        let credential = credential.to_owned();
        async move { ingest.heartbeat(&credential, beat).await }
    };
    for (agent, credential) in [
        (&kept, &kept_credential),
        (&rotated, &old_credential),
        (&doomed, &doomed_credential),
    ] {
        on_other(credential, agent, 1).await.unwrap();
    }
    assert_eq!(reads(), 0, "the first heartbeats read no credential alone");

    // The operator re-bootstraps `rotated` and its VM registers again through the first
    // replica, which refuses the old credential at once though it had it cached...
    let issued = h
        .post(
            &format!("/api/agents/{rotated}/bootstrap-token"),
            &h.operator,
            json!({}),
        )
        .await;
    let fresh = issued.body["bootstrap_token"].as_str().unwrap().to_owned();
    let registered = register(&h, &rotated, &fresh).await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    let new_credential = registered.body["credential"].as_str().unwrap().to_owned();
    heartbeat(&h, &old_credential, &beat(&rotated, "b", 2, 10))
        .await
        .problem(401, None);
    // ...and the other at its next load, which forgets its copy.
    let reloaded = other.ingest.reload_credentials().await.unwrap();
    assert_eq!((reloaded.credentials, reloaded.forgotten), (3, 1));
    let refused = on_other(&old_credential, &rotated, 2).await;
    assert!(
        matches!(refused, Err(IngestError::Unauthorized(_))),
        "{refused:?}"
    );
    on_other(&new_credential, &rotated, 3).await.unwrap();

    // Destroyed through the first replica: refused by the other after its next load.
    let destroyed = h.delete(&format!("/api/agents/{doomed}"), &token).await;
    assert_eq!(destroyed.status, 202, "{:#}", destroyed.body);
    h.run_jobs().await;
    other.ingest.reload_credentials().await.unwrap();
    let refused = on_other(&doomed_credential, &doomed, 2).await;
    assert!(
        matches!(refused, Err(IngestError::Unauthorized(_))),
        "{refused:?}"
    );

    // Without a load in between, a copy is trusted for `credential_ttl` after it was read,
    // never longer.
    let issued = h
        .post(
            &format!("/api/agents/{kept}/bootstrap-token"),
            &h.operator,
            json!({}),
        )
        .await;
    let fresh = issued.body["bootstrap_token"].as_str().unwrap().to_owned();
    assert_eq!(register(&h, &kept, &fresh).await.status, 200);
    on_other(&kept_credential, &kept, 2).await.unwrap();
    h.advance(60_000);
    let refused = on_other(&kept_credential, &kept, 3).await;
    assert!(
        matches!(refused, Err(IngestError::Unauthorized(_))),
        "{refused:?}"
    );

    // An Agent enrolled after the load is heard at once, and the next load keeps it.
    let (late, late_credential) = enrolled(&h, &token, "late").await;
    on_other(&late_credential, &late, 1).await.unwrap();
    let reloaded = other.ingest.reload_credentials().await.unwrap();
    assert_eq!(
        reloaded.credentials, 3,
        "kept's, rotated's and late's new ones"
    );
    on_other(&late_credential, &late, 2).await.unwrap();
}

/// A second replica on the same database, started now.
fn replica(h: &Harness) -> App {
    App::new(
        h.app.store.clone(),
        h.clock.clone(),
        control::providers::Providers::new(control::providers::local::cloud(h.local.clone())),
        Settings::default(),
    )
}

/// Lets `ms` pass on `app` as `control serve` would: a health judgement every second.
async fn judged_each_second(h: &Harness, app: &App, ms: i64) -> usize {
    let mut flagged = 0;
    for _ in 0..ms / 1_000 {
        h.advance(1_000);
        flagged += app.ingest.judge().await.unwrap();
    }
    flagged
}

async fn a_restart_long_after_the_old_replica_counts_the_grace_from_its_own_start(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    accepted(&h, &credential, &beat(&agent, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    h.app.ingest.judge_orphans().await.unwrap();

    // The old replica dies; control is back only ten minutes later. The Agent's heartbeats
    // failed meanwhile and it backs off (up to five minutes by default).
    h.advance(600_000);
    let restarted = replica(&h);
    let grace = 3 * INTERVAL_MS + 300_000;
    h.advance(grace - 1_000);
    assert_eq!(
        restarted.ingest.judge_orphans().await.unwrap(),
        0,
        "within the grace counted from the new start, not the old replica's last sign of life"
    );
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], true);
    h.advance(2_000);
    assert_eq!(restarted.ingest.judge_orphans().await.unwrap(), 1);
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], false);
}

async fn a_frozen_control_flags_no_agent_that_resumes_within_its_backoff(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    let (other, other_credential) = enrolled(&h, &token, "other").await;
    h.advance(4 * INTERVAL_MS);
    accepted(&h, &credential, &beat(&agent, "b", 1, 5)).await;
    accepted(&h, &other_credential, &beat(&other, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    assert_eq!(judged_each_second(&h, &h.app, 10_000).await, 0);

    // control is frozen for 60 s: no judgement, no heartbeat taken in.
    h.advance(60_000);
    // It resumes; the agents are backing off after their timed-out heartbeats.
    assert_eq!(
        judged_each_second(&h, &h.app, 120_000).await,
        0,
        "nobody flagged while the agents back off"
    );
    // One comes back within its backoff plus an interval and keeps heartbeating; the other
    // stays silent.
    for n in 0..8 {
        accepted(&h, &credential, &beat(&agent, "b", 2 + n, 200 + 30 * n)).await;
        assert_eq!(judged_each_second(&h, &h.app, INTERVAL_MS).await, 0);
    }
    accepted(&h, &credential, &beat(&agent, "b", 10, 500)).await;
    assert_eq!(
        judged_each_second(&h, &h.app, INTERVAL_MS - 1_000).await,
        0,
        "silence counted from the resumption plus the agents' longest backoff"
    );
    assert_eq!(judged_each_second(&h, &h.app, 2_000).await, 1);
    assert_eq!(agent_view(&h, &token, &other).await["healthy"], false);
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], true);
    // The one that resumed is judged as usual: silent for the limit since its heartbeat.
    assert_eq!(
        judged_each_second(&h, &h.app, 3 * INTERVAL_MS - 32_000).await,
        0
    );
    assert_eq!(judged_each_second(&h, &h.app, 2_000).await, 1);
    assert_eq!(agent_view(&h, &token, &agent).await["healthy"], false);
}

async fn support_sees_the_newest_heartbeat_from_any_replica(db: TestDb) {
    let (h, token) = setup(db).await;
    let (agent, credential) = enrolled(&h, &token, "dev").await;
    assert!(
        agent_view(&h, &token, &agent)
            .await
            .get("support")
            .is_none(),
        "no heartbeat yet"
    );
    // The Agent heartbeats to this replica; another answers the dashboard.
    let other = replica(&h);
    let other_view = || async {
        let reply = control::http::router(other.clone())
            .oneshot(
                axum::http::Request::get(format!("/api/agents/{agent}"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(reply.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    accepted(&h, &credential, &beat(&agent, "b", 1, 5)).await;
    h.app.ingest.flush(false).await.unwrap();
    let own = agent_view(&h, &token, &agent).await;
    assert_eq!(own["support"]["boot_id"], "b", "{own:#}");
    assert_eq!(own["support"]["tunnel"]["state"], "ready");
    assert_eq!(own["support"]["slice"]["free_bytes"], 1000);

    // Figures that move each heartbeat: this replica shows them at once, without a write.
    let written = h
        .app
        .ingest
        .stats
        .liveness_rows_written
        .load(Ordering::Relaxed);
    h.advance(INTERVAL_MS);
    let mut figures = beat(&agent, "b", 2, 35);
    figures["slice"]["free_bytes"] = json!(900);
    accepted(&h, &credential, &figures).await;
    h.app.ingest.flush(false).await.unwrap();
    assert_eq!(
        h.app
            .ingest
            .stats
            .liveness_rows_written
            .load(Ordering::Relaxed),
        written,
        "free space alone is not written at once"
    );
    let own = agent_view(&h, &token, &agent).await;
    assert_eq!(own["support"]["slice"]["free_bytes"], 900);
    assert_eq!(own["support"]["sequence"], 2);
    assert_eq!(own["last_heartbeat_at"], own["support"]["heartbeat_at"]);
    assert_eq!(
        other_view().await["support"]["sequence"],
        1,
        "written behind"
    );

    // A tunnel restart and a slice change: written with the heartbeat that reports them, so
    // the other replica shows them without waiting for a flush.
    h.advance(INTERVAL_MS);
    let mut changed = beat(&agent, "b", 3, 65);
    changed["cloudflared"]["restarts"] = json!(2);
    changed["cloudflared"]["last_exit"] = json!(137);
    changed["cloudflared"]["crash_loop"] = json!(true);
    changed["slice"] = json!({"state": "nearly_full", "free_bytes": 10, "total_bytes": 2000});
    accepted(&h, &credential, &changed).await;
    let seen = other_view().await;
    let support = &seen["support"];
    assert_eq!(support["sequence"], 3, "{seen:#}");
    assert_eq!(
        (
            &support["tunnel"]["restarts"],
            &support["tunnel"]["last_exit"],
            &support["tunnel"]["crash_loop"],
            &support["slice"]["state"],
            &support["slice"]["free_bytes"],
        ),
        (
            &json!(2),
            &json!(137),
            &json!(true),
            &json!("nearly_full"),
            &json!(10)
        )
    );
    assert_eq!(support["agent_version"], "0.1.0");
    assert_eq!(support["image_version"], "2026.11.0");
    assert_eq!(seen["last_heartbeat_at"], support["heartbeat_at"]);
}

/// Lifecycle changes are followed from the newest one read, and read again from 5 s before it
/// while a change committed late (stamped before the newest, committed after it was read)
/// could still land; once it could not, only newer changes are read. Before, a burst (every
/// Agent changed in the same second) was read again every second until another change came.
async fn a_burst_of_changes_is_read_again_only_while_a_late_commit_could_land(db: TestDb) {
    let (h, token) = setup(db).await;
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        agents.push(h.agent(&token, name).await);
    }
    let ingest = &h.app.ingest;
    let first = ingest.follow_changes().await.unwrap();
    assert!(first >= 3, "the first reading reads every Agent: {first}");
    h.advance(1_000);
    assert_eq!(ingest.follow_changes().await.unwrap(), first, "read again");
    h.advance(10_000);
    assert_eq!(
        ingest.follow_changes().await.unwrap(),
        0,
        "quiet: nothing read"
    );
    h.advance(60_000);
    assert_eq!(ingest.follow_changes().await.unwrap(), 0, "still quiet");

    // One Agent changes: read once it is the newest, then again while a late one could land.
    let path = format!("/api/agents/{}/stop", agents[2]);
    let stop = h.call(Method::POST, &path, Some(&token), None).await;
    assert!(stop.status.is_success(), "{:#}", stop.body);
    h.run_jobs().await;
    let newest = ingest.follow_changes().await.unwrap();
    assert!(newest >= 1, "the stop is read: {newest}");
    h.advance(1_000);
    assert_eq!(ingest.follow_changes().await.unwrap(), newest);
    // A change committed late: stamped a second before the stop, committed after it was read.
    let late = h.now().as_millis() - 2_000;
    let sql = format!(
        "UPDATE agents SET updated_at = {late} WHERE id = '{}'",
        agents[0]
    );
    common::execute_raw(&h.app.store, Box::leak(sql.into_boxed_str()))
        .await
        .unwrap();
    assert_eq!(
        ingest.follow_changes().await.unwrap(),
        newest + 1,
        "the late change is read"
    );
    h.advance(10_000);
    assert_eq!(ingest.follow_changes().await.unwrap(), 0, "quiet again");
}
