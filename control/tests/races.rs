//! Races and hostile input found in review, kept as regression tests: replicas losing job
//! leases, Idempotency-Key claims outliving their lock, verifying a chain that is being
//! appended to, and NUL bytes in ids.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::Method;
use common::Harness;
use control::app::{App, Settings};
use control::clock::Clock;
use control::providers::{
    Cloud, Labels, Page, ProviderError, Providers, Server, ServerSpec, ServerStatus, Servers,
};
use serde_json::json;
use sqlx::Connection;
use test_support::{Backend, TestDb, dual_backend_tests};
use tokio::sync::{Notify, mpsc};

dual_backend_tests!(
    a_stop_gives_the_os_its_grace_then_cuts_the_power,
    a_server_adopted_after_a_conflict_still_registers,
    a_replica_that_lost_its_lease_changes_nothing,
    a_gone_replicas_job_is_taken_over_a_live_ones_is_not,
    a_replica_started_again_beside_a_live_one_takes_over_from_the_dead_one,
    verify_is_clean_while_events_are_appended,
    nul_bytes_in_ids_are_bad_input_on_both_backends,
);

/// A provider whose stop calls wait to be released: the first fails, the second succeeds.
#[derive(Debug)]
struct Gated {
    calls: AtomicUsize,
    entered: mpsc::UnboundedSender<usize>,
    release: [Notify; 2],
    stopped: AtomicBool,
}

fn server(id: &str) -> Server {
    Server {
        id: id.to_owned(),
        name: id.to_owned(),
        status: ServerStatus::Off,
        image: String::new(),
        labels: Labels::new(),
        ipv4: None,
        ipv6: None,
    }
}

#[async_trait]
impl Servers for Gated {
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        Ok(server(&spec.name))
    }
    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        Ok(Some(server(id)))
    }
    async fn list_servers(
        &self,
        _: &Labels,
        _: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    }
    async fn power_on(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn shutdown(&self, _: &str) -> Result<(), ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.entered.send(call).unwrap();
        self.release[call.min(1)].notified().await;
        if call == 0 {
            Err(ProviderError::permanent("provider said no"))
        } else {
            self.stopped.store(true, Ordering::SeqCst);
            Ok(())
        }
    }
    async fn power_off(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn delete_server(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The local provider, behind a network that loses the answer to the first create (the server
/// is made all the same) and a listing that does not show it yet on the next attempt's lookup.
#[derive(Debug)]
struct Lagging {
    inner: Arc<control::providers::local::LocalProvider>,
    creates: AtomicUsize,
    lists: AtomicUsize,
}

#[async_trait]
impl Servers for Lagging {
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        let created = self.inner.create_server(spec).await;
        if self.creates.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(ProviderError::transient("timed out waiting for the answer"));
        }
        created
    }
    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        self.inner.get_server(id).await
    }
    async fn list_servers(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        // Lookups before the second create see nothing (however many a step makes); the
        // adoption lookup after its conflict does.
        self.lists.fetch_add(1, Ordering::SeqCst);
        if self.creates.load(Ordering::SeqCst) < 2 {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        self.inner.list_servers(selector, page).await
    }
    async fn power_on(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.power_on(id).await
    }
    async fn shutdown(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.shutdown(id).await
    }
    async fn power_off(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.power_off(id).await
    }
    async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.delete_server(id).await
    }
}

/// The local provider behind a guest that ignores ACPI: shutdown does nothing, power-off works.
#[derive(Debug)]
struct Stubborn {
    inner: Arc<control::providers::local::LocalProvider>,
    power_offs: AtomicUsize,
}

#[async_trait]
impl Servers for Stubborn {
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        self.inner.create_server(spec).await
    }
    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        self.inner.get_server(id).await
    }
    async fn list_servers(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        self.inner.list_servers(selector, page).await
    }
    async fn power_on(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.power_on(id).await
    }
    async fn shutdown(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn power_off(&self, id: &str) -> Result<(), ProviderError> {
        self.power_offs.fetch_add(1, Ordering::SeqCst);
        self.inner.power_off(id).await
    }
    async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        self.inner.delete_server(id).await
    }
}

/// A stop waits for the OS to shut down, for the stop grace, without spending the job's
/// attempts (the replica allows one), then cuts the power and records the Agent paused.
async fn a_stop_gives_the_os_its_grace_then_cuts_the_power(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev").await;
    let stubborn = Arc::new(Stubborn {
        inner: h.local.clone(),
        power_offs: AtomicUsize::new(0),
    });
    let replica = App::new(
        h.app.store.clone(),
        h.clock.clone(),
        Providers::new(Cloud {
            name: "local",
            servers: stubborn.clone(),
            firewalls: None,
            volumes: None,
            slices: None,
        }),
        Settings {
            job_max_attempts: 1,
            ..Settings::default()
        },
    );
    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    let view = || async { h.get(&format!("/api/agents/{agent}"), &token).await.body };
    for _ in 0..11 {
        control::jobs::run_due(&replica).await.unwrap();
        assert_eq!(
            stubborn.power_offs.load(Ordering::SeqCst),
            0,
            "within the grace"
        );
        let seen = view().await;
        assert_eq!(
            (&seen["state"], &seen["operation"]),
            (&json!("running"), &json!("stop")),
            "{seen:#}"
        );
        h.advance(5_000);
    }
    h.advance(5_000); // 60 s since the shutdown: the grace is over
    control::jobs::run_due(&replica).await.unwrap();
    assert_eq!(stubborn.power_offs.load(Ordering::SeqCst), 1);
    h.advance(5_000);
    control::jobs::run_due(&replica).await.unwrap();
    let seen = view().await;
    assert_eq!(
        (&seen["state"], &seen["operation"], &seen["last_error"]),
        (&json!("paused"), &json!(null), &json!(null)),
        "{seen:#}"
    );
    assert_eq!(stubborn.power_offs.load(Ordering::SeqCst), 1);
}

/// A retry that found no server armed a new bootstrap token, then met a uniqueness conflict
/// and adopted the server the first attempt made, which holds the token armed before: that
/// token must still register (it used to be refused forever).
async fn a_server_adopted_after_a_conflict_still_registers(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let lagging = Arc::new(Lagging {
        inner: h.local.clone(),
        creates: AtomicUsize::new(0),
        lists: AtomicUsize::new(0),
    });
    let replica = App::new(
        h.app.store.clone(),
        h.clock.clone(),
        Providers::new(Cloud {
            name: "local",
            servers: lagging.clone(),
            firewalls: None,
            volumes: None,
            slices: None,
        }),
        Settings::default(),
    );
    let provisioned = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(provisioned.status, 202, "{:#}", provisioned.body);
    let agent = provisioned.body["id"].as_str().unwrap().to_owned();
    control::jobs::run_due(&replica).await.unwrap();
    let held = h.local.vm(&agent).unwrap().bootstrap_token.unwrap();
    for _ in 0..5 {
        h.advance(10 * 60 * 1000);
        control::jobs::run_due(&replica).await.unwrap();
    }
    assert_eq!(
        lagging.creates.load(Ordering::SeqCst),
        2,
        "a second create met the conflict"
    );
    let view = h.get(&format!("/api/agents/{agent}"), &token).await;
    assert_eq!(view.body["state"], "running", "{:#}", view.body);
    assert_eq!(h.local.vm(&agent).unwrap().bootstrap_token.unwrap(), held);

    let register = |bootstrap: &str| {
        json!({"agent_id": agent, "bootstrap_token": bootstrap, "boot_id": "boot-1",
               "agent_version": "0.1.0", "image_version": "2026.11.0"})
    };
    let registered = h
        .call(
            Method::POST,
            "/api/agent/v1/register",
            None,
            Some(register(&held)),
        )
        .await;
    assert_eq!(registered.status, 200, "{:#}", registered.body);
    // Single use all the same: the token is spent, and so is the one the retry armed.
    h.call(
        Method::POST,
        "/api/agent/v1/register",
        None,
        Some(register(&held)),
    )
    .await
    .problem(401, None);
}

async fn a_replica_that_lost_its_lease_changes_nothing(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev").await;

    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let gated = Arc::new(Gated {
        calls: AtomicUsize::new(0),
        entered: entered_tx,
        release: [Notify::new(), Notify::new()],
        stopped: AtomicBool::new(false),
    });
    let replica = || {
        App::new(
            h.app.store.clone(),
            h.clock.clone(),
            Providers::new(Cloud {
                name: "local",
                servers: gated.clone(),
                firewalls: None,
                volumes: None,
                slices: None,
            }),
            Settings::default(),
        )
    };
    let (a, b) = (replica(), replica());

    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202);
    let run_a = tokio::spawn(async move { control::jobs::run_due(&a).await });
    assert_eq!(entered.recv().await, Some(0));
    h.advance(6 * 60 * 1000); // past A's five-minute lease: B takes the job over
    let run_b = tokio::spawn(async move { control::jobs::run_due(&b).await });
    assert_eq!(entered.recv().await, Some(1));

    // A's provider call fails now; B still holds the job: A must change nothing.
    gated.release[0].notify_one();
    run_a.await.unwrap().unwrap();
    let view = h.get(&format!("/api/agents/{agent}"), &token).await.body;
    assert_eq!(
        (view["operation"].as_str(), view["last_error"].clone()),
        (Some("stop"), serde_json::Value::Null)
    );
    let again = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    again.problem(409, None);

    gated.release[1].notify_one();
    run_b.await.unwrap().unwrap();
    assert!(gated.stopped.load(Ordering::SeqCst));
    let view = h.get(&format!("/api/agents/{agent}"), &token).await.body;
    assert_eq!(
        (view["state"].as_str(), view["operation"].clone()),
        (Some("paused"), serde_json::Value::Null),
        "the ledger follows the provider"
    );
}

/// A job leased by a replica that stopped announcing itself is claimed by another within the
/// replica timeout, long before its five-minute lease ends; a live replica's, or one whose
/// holder never announced itself, only once its lease ends.
async fn a_gone_replicas_job_is_taken_over_a_live_ones_is_not(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev").await;
    let stop = h
        .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
        .await;
    assert_eq!(stop.status, 202);
    let timeout = control::clock::millis(Settings::default().ingest.replica_timeout);
    let lease = control::clock::millis(Settings::default().job_lease);
    assert!(
        lease > 3 * timeout,
        "the test needs a lease well beyond the timeout"
    );
    let now = || h.clock.now().as_millis();
    let claim = |replica: &'static str| {
        let store = h.app.store.clone();
        let at = now();
        async move {
            let mut tx = store.write().await.unwrap();
            let job = tx
                .claim_job(replica, at, at + lease, at - timeout)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            job.map(|job| job.id)
        }
    };
    let announce = |replica: &'static str| {
        let store = h.app.store.clone();
        let at = now();
        async move {
            let mut tx = store.write().await.unwrap();
            tx.announce_replica(replica, at, at).await.unwrap();
            tx.commit().await.unwrap();
        }
    };

    announce("replica_a").await;
    let job = claim("replica_a").await.expect("the stop job is due");
    // A keeps announcing itself: B never takes its job, however long the step runs.
    for _ in 0..3 {
        h.advance(timeout - 1_000);
        announce("replica_a").await;
        announce("replica_b").await;
        assert_eq!(
            claim("replica_b").await,
            None,
            "a live replica keeps its lease"
        );
    }
    // A goes silent: once the replica timeout passes, B takes the job over.
    h.advance(timeout + 1);
    announce("replica_b").await;
    assert_eq!(
        claim("replica_b").await,
        Some(job.clone()),
        "taken over from a gone replica"
    );

    // A holder that never announced itself keeps the job until its lease ends.
    h.advance(lease + 1);
    assert_eq!(
        claim("replica_x").await,
        Some(job.clone()),
        "B's lease ran out"
    );
    h.advance(2 * timeout);
    announce("replica_c").await;
    assert_eq!(
        claim("replica_c").await,
        None,
        "an unknown holder is not judged gone"
    );
    h.advance(lease);
    assert_eq!(
        claim("replica_c").await,
        Some(job),
        "past the lease, as before"
    );
}

/// Two replicas share a data dir; the second dies and is started again while the first
/// lives on. Long before the dead one could count as silent, the new one takes the second
/// place's lock, and with it the dead one's job; the live one's job and place stay its own.
async fn a_replica_started_again_beside_a_live_one_takes_over_from_the_dead_one(db: TestDb) {
    use control::predecessor::{lock_file, take_over};

    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agents = [h.agent(&token, "one").await, h.agent(&token, "two").await];
    for agent in &agents {
        let stop = h
            .post(&format!("/api/agents/{agent}/stop"), &token, json!({}))
            .await;
        assert_eq!(stop.status, 202);
    }
    let replica = || {
        App::new(
            h.app.store.clone(),
            h.clock.clone(),
            control::providers::Providers::new(control::providers::local::cloud(h.local.clone())),
            Settings::default(),
        )
    };
    let timeout = control::clock::millis(Settings::default().ingest.replica_timeout);
    let lease = control::clock::millis(Settings::default().job_lease);
    let claim = |app: &App| {
        let (store, owner, at) = (app.store.clone(), app.replica_id.clone(), h.clock.now());
        async move {
            let at = at.as_millis();
            let mut tx = store.write().await.unwrap();
            tx.announce_replica(&owner, at, at).await.unwrap();
            let job = tx
                .claim_job(&owner, at, at + lease, at - timeout)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            job.map(|job| job.id)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let named = |place| std::fs::read_to_string(lock_file(dir.path(), place)).unwrap();

    let (live, dead) = (replica(), replica());
    let _live_place = take_over(dir.path(), &live).await.expect("the first place");
    let dead_place = take_over(dir.path(), &dead)
        .await
        .expect("the second place");
    assert_eq!(named(0).trim(), live.replica_id);
    assert_eq!(named(1).trim(), dead.replica_id);
    let live_job = claim(&live).await.expect("a stop job is due");
    let dead_job = claim(&dead).await.expect("the other stop job is due");
    assert_ne!(live_job, dead_job);

    // The process holding the second place dies: the operating system drops its lock.
    drop(dead_place);
    h.advance(1_000);
    let again = replica();
    assert_eq!(
        claim(&again).await,
        None,
        "both jobs are leased to replicas not yet silent"
    );
    let _place = take_over(dir.path(), &again)
        .await
        .expect("the dead one's place");
    assert_eq!(named(1).trim(), again.replica_id);
    assert_eq!(
        named(0).trim(),
        live.replica_id,
        "the live one's place is untouched"
    );
    assert_eq!(
        claim(&again).await,
        Some(dead_job),
        "the dead replica's job, at once"
    );
    assert_eq!(claim(&again).await, None, "the live replica keeps its job");
}

async fn verify_is_clean_while_events_are_appended(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev").await;
    let store = h.app.store.clone();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (store, writing) = (store.clone(), writing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                let mut tx = store.write().await.unwrap();
                control::audit::append(
                    &mut tx,
                    control::audit::NewEvent {
                        at: control_api::Timestamp::from_millis(n),
                        actor: "token:tok_test".to_owned(),
                        action: control_api::audit::AuditAction::AgentStart,
                        resource_kind: control_api::usage::ResourceKind::Agent,
                        resource_id: &agent,
                        account_id: "acc_test",
                        to_account_id: None,
                        request_id: None,
                        caller_request_id: None,
                        details: json!({}),
                    },
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                n += 1;
            }
        })
    };
    for run in 0..40 {
        let verdict = control::audit::verify(&store).await.unwrap();
        assert!(verdict.ok, "run {run}: {:?}", verdict.first_bad);
    }
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(control::audit::verify(&store).await.unwrap().ok);
}

async fn nul_bytes_in_ids_are_bad_input_on_both_backends(db: TestDb) {
    let h = Harness::new(db).await;
    h.release("2026.11.0").await;
    let (account, token) = h.account("Acme").await;
    let agent = h.agent(&token, "dev").await;
    let before = h.snapshot().await;
    for (path, status, field) in [
        ("/api/agents/agt_%00".to_owned(), 404, None),
        ("/api/agents/agt_%00/timeline".to_owned(), 404, None),
        ("/api/agents?cursor=%00".to_owned(), 422, Some("cursor")),
        (
            "/api/audit?resource_id=%00".to_owned(),
            422,
            Some("resource_id"),
        ),
        (
            format!("/api/usage?from=2026-11-20&to=2026-11-20&account_id={account}%00"),
            422,
            Some("account_id"),
        ),
    ] {
        h.get(&path, &h.operator).await.problem(status, field);
    }
    let bodies = [
        (
            "/api/agents".to_owned(),
            json!({"name": "x", "account_id": "acc_\u{0}"}),
            "account_id",
        ),
        (
            format!("/api/agents/{agent}/transfer"),
            json!({"to_account": "acc_\u{0}"}),
            "to_account",
        ),
        (
            "/api/accounts".to_owned(),
            json!({"name": "a\u{0}b"}),
            "name",
        ),
    ];
    for (path, body, field) in bodies {
        h.post(&path, &h.operator, body)
            .await
            .problem(422, Some(field));
    }
    h.post("/api/accounts/acc_%00/tokens", &h.operator, json!({}))
        .await
        .problem(404, None);
    assert_eq!(h.snapshot().await, before);
}

/// PostgreSQL: a request stuck past its Idempotency-Key claim's lock, and a retry that takes
/// the claim over, must not both take effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_idempotency_claim_yields_one_effect() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    assert_eq!(db.backend, Backend::Postgres);
    let url = db.url.clone();
    let h = Arc::new(Harness::new(db).await);
    h.release("2026.11.0").await;
    let (_, token) = h.account("Acme").await;

    // A slow transaction elsewhere holds the audit chain's head.
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("UPDATE audit_head SET seq = seq WHERE singleton = 1")
        .execute(&mut blocker)
        .await
        .unwrap();

    let send = |h: Arc<Harness>, token: String| async move {
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", "K1".to_owned()),
        ];
        h.raw(
            Method::POST,
            "/api/agents",
            Some(&token),
            &headers,
            br#"{"name":"dev"}"#.to_vec(),
        )
        .await
    };
    let first = tokio::spawn(send(h.clone(), token.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.advance(61_000); // past the claim's one-minute lock
    let retry = tokio::spawn(send(h.clone(), token.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let (first, retry) = (first.await.unwrap(), retry.await.unwrap());

    let agents = h.get("/api/agents", &token).await.body["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(agents, 1, "one Idempotency-Key, one Agent");
    let statuses = [first.status.as_u16(), retry.status.as_u16()];
    assert!(
        statuses.contains(&202) && statuses.contains(&409),
        "{statuses:?}: {:#} {:#}",
        first.body,
        retry.body
    );
    let loser = if first.status == 409 { &first } else { &retry };
    assert!(
        loser.body["detail"]
            .as_str()
            .unwrap()
            .contains("changed nothing"),
        "{:#}",
        loser.body
    );
}
