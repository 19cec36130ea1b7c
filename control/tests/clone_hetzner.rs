//! Cloning on Hetzner, against the Hetzner fake, on SQLite and PostgreSQL: volumes cannot be
//! copied through the API, so the source's volume is lent to the clone's server, whose VM
//! copies it (the VM is played here by this test: it registers with the token its first-boot
//! document delivered and reports the copy in heartbeats), and given back once the copy is
//! done. A failed copy gives the volume back too, and puts the source back as it was.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use common::Harness;
use control::cloud_init::read_agent_document;
use control::providers::hetzner::{self, Hetzner, HetznerConfig};
use control::providers::{Providers, Secret};
use provider_fakes::hetzner::{HetznerFake, Options, schema};
use serde_json::{Value, json};
use test_support::{TestDb, dual_backend_tests};

dual_backend_tests!(
    a_clone_copies_on_its_vm_from_the_sources_lent_volume,
    a_failed_copy_gives_the_volume_back_and_the_source_its_state,
);

/// A harness whose new Agents go to a Hetzner fake, with a running Agent `dev` on release
/// 2026.11.0, then 2026.12.0 made current.
async fn setup(db: TestDb) -> (HetznerFake, Harness, String, String) {
    setup_with(db, control::app::Settings::default()).await
}

/// [`setup`], with control's `settings`.
async fn setup_with(
    db: TestDb,
    settings: control::app::Settings,
) -> (HetznerFake, Harness, String, String) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let fake = HetznerFake::start(Options {
        action_delay: Duration::from_millis(20),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
    config.base_url = fake.url();
    config.action_poll = Duration::from_millis(10);
    let project = Hetzner::new(config, Arc::new(control::clock::SystemClock)).unwrap();
    let h = Harness::with_providers(
        db,
        |_| Providers::new(hetzner::cloud(Arc::new(project))),
        settings,
    )
    .await;
    h.release_with("2026.11.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("acme").await;
    let source = h.agent(&token, "dev").await;
    h.run_jobs_until(&source, "running").await;
    h.advance(60_000);
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    (fake, h, token, source)
}

/// The fake's server of Agent `id`.
fn server_of(fake: &HetznerFake, id: &str) -> provider_fakes::hetzner::ServerView {
    fake.control()
        .servers()
        .into_iter()
        .find(|s| s.labels.values().any(|v| v == id))
        .unwrap_or_else(|| panic!("no server of {id}"))
}

/// The fake's volume of Agent `id`.
fn volume_of(fake: &HetznerFake, id: &str) -> provider_fakes::hetzner::VolumeView {
    fake.control()
        .volumes()
        .into_iter()
        .find(|v| v.labels.values().any(|l| l == id))
        .unwrap_or_else(|| panic!("no volume of {id}"))
}

/// The clone's VM as far as control can tell: registered with the bootstrap token its
/// first-boot document delivered, and sending heartbeats.
struct CloneVm {
    agent_id: String,
    credential: String,
    sequence: u64,
}

impl CloneVm {
    /// Boots from the document Hetzner holds for the clone's server: checks it names the
    /// source's volume to copy from, and registers.
    async fn boot(h: &Harness, fake: &HetznerFake, clone: &str, source: &str) -> Self {
        let user_data = server_of(fake, clone).user_data.unwrap();
        let document = read_agent_document(&Secret(user_data)).unwrap();
        let from = document
            .clone_from
            .expect("the clone's agent.toml has [clone_from]");
        assert_eq!(from.source_agent, source);
        let lent = volume_of(fake, source);
        assert_eq!(
            from.device.unwrap().to_str().unwrap(),
            format!("/dev/disk/by-id/scsi-0HC_Volume_{}", lent.id),
            "the device Hetzner names for the source's volume"
        );
        let registered = h
            .call(
                Method::POST,
                "/api/agent/v1/register",
                None,
                Some(json!({
                    "agent_id": clone,
                    "bootstrap_token": document.bootstrap_token.0,
                    "boot_id": "clone-boot-1",
                    "agent_version": "0.1.0",
                    "image_version": "2026.12.0",
                })),
            )
            .await;
        assert_eq!(registered.status, 200, "{:#}", registered.body);
        Self {
            agent_id: clone.to_owned(),
            credential: registered.body["credential"].as_str().unwrap().to_owned(),
            sequence: 0,
        }
    }

    /// Sends a heartbeat with the slice mounted and the copy as `clone` says.
    async fn report(&mut self, h: &Harness, source: &str, clone: Value) {
        let beat = self.beat(source, &clone);
        let sent = h
            .call(
                Method::POST,
                "/api/agent/v1/heartbeat",
                Some(&self.credential),
                Some(beat),
            )
            .await;
        assert_eq!(sent.status, 200, "{:#}", sent.body);
    }

    /// The next heartbeat, with the slice mounted and the copy as `clone` says.
    fn beat(&mut self, source: &str, clone: &Value) -> Value {
        self.sequence += 1;
        let mut report = json!({"source_agent": source});
        report
            .as_object_mut()
            .unwrap()
            .extend(clone.as_object().unwrap().clone());
        let beat = json!({
            "agent_id": self.agent_id,
            "boot_id": "clone-boot-1",
            "sequence": self.sequence,
            "agent_version": "0.1.0",
            "image_version": "2026.12.0",
            "agent_uptime_s": self.sequence * 30,
            "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0,
                            "crash_loop": false},
            "slice": {"state": "mounted"},
            "host": {"cpus": 2, "load_centi": [0, 0, 0], "memory_total_bytes": 1,
                     "memory_available_bytes": 1, "root_free_bytes": 1, "uptime_s": 40},
            "clone": report,
        });
        beat
    }
}

async fn view(h: &Harness, id: &str) -> Value {
    h.get(&format!("/api/agents/{id}"), &h.operator).await.body
}

/// Runs the due jobs a few times, letting time pass, while the clone's job waits on its VM.
async fn run_a_while(h: &Harness) {
    for _ in 0..5 {
        h.run_jobs().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        h.advance(11_000);
    }
}

/// Clones `source` and runs the job until it waits for the clone's VM: the source is off
/// (recorded paused), its volume detached, and the clone's server made with its own volume.
async fn clone_until_its_vm_boots(
    fake: &HetznerFake,
    h: &Harness,
    token: &str,
    source: &str,
) -> String {
    let source_volume = volume_of(fake, source);
    assert_eq!(
        source_volume.server,
        Some(server_of(fake, source).id),
        "the source's slice is attached to its server"
    );
    let cloned = h
        .post(&format!("/api/agents/{source}/clone"), token, json!({}))
        .await;
    assert_eq!(cloned.status, 202, "{:#}", cloned.body);
    let clone = cloned.body["id"].as_str().unwrap().to_owned();
    for _ in 0..60 {
        h.run_jobs().await;
        if fake
            .control()
            .servers()
            .iter()
            .any(|s| s.labels.values().any(|v| *v == clone))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        h.advance(6_000);
    }
    run_a_while(h).await;
    assert_eq!(server_of(fake, source).status, "off");
    assert_eq!(view(h, source).await["state"], "paused");
    assert_eq!(
        volume_of(fake, source).server,
        None,
        "lent: detached from the source, and not attached to the clone before it booted"
    );
    let clone_server = server_of(fake, &clone);
    assert_eq!(clone_server.volumes, vec![volume_of(fake, &clone).id]);
    assert_eq!(view(h, &clone).await["operation"], "provision");
    clone
}

async fn a_clone_copies_on_its_vm_from_the_sources_lent_volume(db: TestDb) {
    lent_copy_and_given_back(setup(db).await).await;
}

/// Every step of the clone run twice in a row, as if control had died before recording it:
/// the second run changes nothing, and the clone ends as it would have.
#[tokio::test]
async fn each_step_of_a_hetzner_clone_run_twice_changes_nothing() {
    let settings = control::app::Settings {
        replay_steps: true,
        ..control::app::Settings::default()
    };
    lent_copy_and_given_back(setup_with(TestDb::sqlite(), settings).await).await;
}

async fn lent_copy_and_given_back(
    (fake, h, token, source): (HetznerFake, Harness, String, String),
) {
    let clone = clone_until_its_vm_boots(&fake, &h, &token, &source).await;
    let lent = volume_of(&fake, &source).id;

    // The clone's VM boots, mounts its own slice and waits for the source's volume.
    let mut vm = CloneVm::boot(&h, &fake, &clone, &source).await;
    vm.report(&h, &source, json!({"state": "waiting"})).await;
    run_a_while(&h).await;
    let clone_server = server_of(&fake, &clone).id;
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(clone_server),
        "attached to the clone once its own slice is mounted"
    );
    assert_eq!(server_of(&fake, &clone).volumes.len(), 2);

    // A long copy: followed past the job's wait limit (15 minutes) while it advances.
    for step in 1..=12_u64 {
        vm.report(
            &h,
            &source,
            json!({"state": "copying", "files_done": step * 100, "files_total": 1_200,
                   "bytes_done": step << 30, "bytes_total": 12_u64 << 30}),
        )
        .await;
        h.run_jobs().await;
        h.advance(90_000);
    }
    let waiting = view(&h, &clone).await;
    assert_eq!(waiting["operation"], "provision", "{waiting:#}");
    assert!(
        h.snapshot().await.contains(&format!(
            "in progress: agent {clone}'s VM is copying agent {source}'s slice: 1200 of 1200 \
             files, 12884901888 of 12884901888 bytes"
        )),
        "the job follows the copy as it advances, spending no attempt"
    );
    assert_eq!(volume_of(&fake, &source).server, Some(clone_server));
    assert_eq!(server_of(&fake, &source).status, "off");

    vm.report(
        &h,
        &source,
        json!({"state": "done", "files_done": 1_200, "files_total": 1_200,
               "bytes_done": 12_u64 << 30, "bytes_total": 12_u64 << 30}),
    )
    .await;
    h.run_jobs_until(&clone, "running").await;
    h.run_jobs_until(&source, "running").await;

    // The volume is back on the source's server, which runs again; the clone keeps its own.
    assert_eq!(volume_of(&fake, &source).id, lent);
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(server_of(&fake, &source).id)
    );
    assert_eq!(server_of(&fake, &source).status, "running");
    assert_eq!(
        server_of(&fake, &clone).volumes,
        vec![volume_of(&fake, &clone).id]
    );
    let source_view = view(&h, &source).await;
    assert!(source_view["cloning_to"].is_null(), "{source_view:#}");
    assert_eq!(view(&h, &clone).await["cloned_from"], source.as_str());
    h.ledger_holds("after a clone on Hetzner").await;
    schema::assert_answers_match_spec(fake.control());
}

/// The clone's VM reports to another replica than the one running the clone's job, which then
/// reads its heartbeats as written behind: rewritten only every write period while the copy's
/// state stays `copying`. The job still follows the copy as it advances, past its wait limit,
/// and never takes the clone for silent.
#[tokio::test]
async fn a_copy_reported_to_another_replica_is_followed_to_its_end() {
    let (fake, h, token, source) = setup(TestDb::sqlite()).await;
    let other = control::app::App::new(
        h.app.store.clone(),
        h.clock.clone(),
        Providers::new(control::providers::local::cloud(h.local.clone())),
        control::app::Settings::default(),
    );
    let clone = clone_until_its_vm_boots(&fake, &h, &token, &source).await;
    let mut vm = CloneVm::boot(&h, &fake, &clone, &source).await;
    let report = async |vm: &mut CloneVm, clone: Value| {
        let beat = serde_json::from_value(vm.beat(&source, &clone)).unwrap();
        other.ingest.heartbeat(&vm.credential, beat).await.unwrap();
        other.ingest.flush(false).await.unwrap();
    };
    report(&mut vm, json!({"state": "waiting"})).await;
    run_a_while(&h).await;
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(server_of(&fake, &clone).id)
    );
    for step in 1..=12_u64 {
        report(
            &mut vm,
            json!({"state": "copying", "files_done": step, "files_total": 12}),
        )
        .await;
        h.run_jobs().await;
        h.advance(90_000);
    }
    assert_eq!(view(&h, &clone).await["operation"], "provision");
    assert!(
        h.snapshot().await.contains("in progress: agent"),
        "followed as in progress, not taken for silent"
    );
    report(
        &mut vm,
        json!({"state": "done", "files_done": 12, "files_total": 12}),
    )
    .await;
    h.run_jobs_until(&clone, "running").await;
    h.run_jobs_until(&source, "running").await;
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(server_of(&fake, &source).id)
    );
    h.ledger_holds("after a clone reported to another replica")
        .await;
}

async fn a_failed_copy_gives_the_volume_back_and_the_source_its_state(db: TestDb) {
    failed_copy_undone(setup(db).await).await;
}

/// The undo steps of a failed clone run twice in a row, too.
#[tokio::test]
async fn each_undo_step_of_a_failed_hetzner_clone_run_twice_changes_nothing() {
    let settings = control::app::Settings {
        replay_steps: true,
        ..control::app::Settings::default()
    };
    failed_copy_undone(setup_with(TestDb::sqlite(), settings).await).await;
}

async fn failed_copy_undone((fake, h, token, source): (HetznerFake, Harness, String, String)) {
    let clone = clone_until_its_vm_boots(&fake, &h, &token, &source).await;
    let mut vm = CloneVm::boot(&h, &fake, &clone, &source).await;
    vm.report(&h, &source, json!({"state": "waiting"})).await;
    run_a_while(&h).await;
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(server_of(&fake, &clone).id)
    );
    vm.report(
        &h,
        &source,
        json!({"state": "failed", "files_done": 10,
               "error": "/run/vm-agent-clone/source/home-coder: no such directory"}),
    )
    .await;
    for _ in 0..40 {
        h.run_jobs().await;
        if !view(&h, &clone).await["last_error"].is_null()
            && view(&h, &clone).await["operation"].is_null()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        h.advance(6_000);
    }
    let given_up = view(&h, &clone).await;
    assert!(given_up["operation"].is_null(), "{given_up:#}");
    assert!(
        given_up["last_error"]
            .as_str()
            .unwrap()
            .contains("no such directory"),
        "the VM's reason reaches the dashboard: {given_up:#}"
    );
    h.run_jobs_until(&source, "running").await;
    assert_eq!(
        volume_of(&fake, &source).server,
        Some(server_of(&fake, &source).id),
        "the volume is back on the source's server"
    );
    assert_eq!(server_of(&fake, &source).status, "running");
    assert!(
        !fake
            .control()
            .servers()
            .iter()
            .any(|s| s.labels.values().any(|v| *v == clone)),
        "the clone's server is deleted"
    );
    assert_eq!(
        fake.control().volumes().len(),
        1,
        "only the source's volume"
    );
    assert!(view(&h, &source).await["cloning_to"].is_null());
    h.ledger_holds("after a failed clone on Hetzner").await;
    schema::assert_answers_match_spec(fake.control());
}
