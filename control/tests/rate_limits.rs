//! The provider call budget: provisioning many Agents on a Hetzner project whose hourly budget
//! is small, against the fakes, and the reconciler's pacing as a fleet outgrows its share.
//!
//! What "within the budget" means here, precisely: the Hetzner fake keeps Hetzner's token
//! bucket (`rate_limit` requests, refilled at `refill_per_second`) and answers 429
//! `rate_limit_exceeded` to any call the bucket cannot cover, counting each one
//! (`Control::rate_limited_calls`). Those refused calls are the calls that exceeded the budget.
//! A single control process that owns the project must make none: once an answer says no
//! request is left it waits its turn, one call per request the provider gives back, instead
//! of sending calls the budget cannot cover. So the test asserts zero 429s answered, on top of
//! what the user sees: every API answer a 2xx, every Agent running, no operation ending in
//! error (a 429 that a retry absorbs would still not reach the user, but it would be a call
//! over the budget). A second process spending the same budget is another matter: its 429s
//! are retried after the provider's `RateLimit-Reset`, and, when the wait is long, the job
//! waits its turn without spending an attempt (the second test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test
#![allow(clippy::cast_precision_loss)] // figures for people: counts far below 2^52

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::clock::SystemClock;
use control::providers::cloudflare::{Cloudflare, CloudflareConfig};
use control::providers::hetzner::{self, Hetzner, HetznerConfig};
use control::providers::http::RetryPolicy;
use control::providers::{Providers, Secret};
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake};
use serde_json::{Value, json};
use test_support::TestDb;

/// Agents provisioned at once.
const AGENTS: usize = 200;
/// The Hetzner project's budget: a bucket of 300 requests, 100 back a second (Hetzner's is
/// 3,600 and one a second; the shape is the same, the test just runs faster).
const BUCKET: u32 = 300;
const REFILL_PER_SECOND: f64 = 100.0;

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(100),
        max_wait: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    }
}

fn hetzner_client(fake: &HetznerFake, policy: RetryPolicy) -> Hetzner {
    let mut config = HetznerConfig::new(Secret(fake.token().to_owned()));
    config.base_url = fake.url();
    config.action_poll = Duration::from_millis(10);
    config.retry = policy;
    Hetzner::new(config, Arc::new(SystemClock)).unwrap()
}

fn cloudflare_client(fake: &CloudflareFake) -> Cloudflare {
    Cloudflare::new(
        CloudflareConfig {
            base_url: fake.url(),
            token: Secret(fake.token().to_owned()),
            account_id: fake.account_id().to_owned(),
            zone_id: fake.zone_id().to_owned(),
            retry: policy(),
        },
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// Every Agent of the listing, and how many still have an operation under way.
async fn agents(h: &common::Harness) -> (Vec<Value>, usize) {
    let listed = h.get("/api/agents?limit=200", &h.operator).await;
    assert_eq!(listed.status, 200, "{:#}", listed.body);
    let items = listed.body["items"].as_array().unwrap().clone();
    let busy = items.iter().filter(|a| !a["operation"].is_null()).count();
    (items, busy)
}

/// Runs the jobs, letting the jobs' time pass (the harness's clock) between runs, until no
/// Agent has an operation under way; panics after `rounds`.
async fn settle(h: &common::Harness, rounds: usize) -> Vec<Value> {
    for _ in 0..rounds {
        h.run_jobs().await;
        let (items, busy) = agents(h).await;
        if busy == 0 {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.advance(6_000);
    }
    panic!("the Agents never settled: {:#}", agents(h).await.0[0]);
}

/// 200 Agents provisioned at once on a Hetzner project with a small budget (and their tunnels
/// on Cloudflare): every one runs, nobody sees a 429, and the fake answered none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_provision_within_a_small_budget() {
    let hetzner_fake = HetznerFake::start(hz::Options {
        rate_limit: BUCKET,
        refill_per_second: Some(REFILL_PER_SECOND),
        action_delay: Duration::ZERO,
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let cloudflare_fake = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let hetzner = Arc::new(hetzner_client(&hetzner_fake, policy()));
    let providers = Providers::new(hetzner::cloud(hetzner))
        .with_tunnels(Arc::new(cloudflare_client(&cloudflare_fake)));
    let settings = control::app::Settings {
        agent_domain: cloudflare_fake.zone_name().to_owned(),
        ..control::app::Settings::default()
    };
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| providers, settings).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;

    let started = Instant::now();
    for n in 0..AGENTS {
        let made = h
            .post("/api/agents", &token, json!({"name": format!("dev{n}")}))
            .await;
        assert!(made.status.is_success(), "{n}: {:#}", made.body);
    }
    let items = settle(&h, 200).await;
    let elapsed = started.elapsed();

    assert_eq!(items.len(), AGENTS);
    for agent in &items {
        assert_eq!(agent["state"], "running", "{agent:#}");
        assert!(agent["last_error"].is_null(), "{agent:#}");
    }
    let hetzner = hetzner_fake.control();
    assert_eq!(hetzner.servers().len(), AGENTS);
    assert_eq!(cloudflare_fake.control().live_tunnels().len(), AGENTS);
    let calls = hetzner.calls_total();
    let refused = hetzner.rate_limited_calls();
    println!(
        "{AGENTS} Agents: {calls} Hetzner calls ({:.1} an Agent) in {:.1} s against a bucket of \
         {BUCKET} refilled at {REFILL_PER_SECOND}/s; 429s answered: {refused}",
        calls as f64 / AGENTS as f64,
        elapsed.as_secs_f64()
    );
    assert_eq!(refused, 0, "calls sent over the budget");
    // The budget was the bottleneck: more calls than the bucket holds, so the client waited.
    assert!(calls > u64::from(BUCKET), "{calls} calls");
    // And the fake served no more than its budget allows over the run.
    let allowed = f64::from(BUCKET) + REFILL_PER_SECOND * elapsed.as_secs_f64();
    assert!(
        (calls as f64) <= allowed,
        "{calls} calls, {allowed} allowed"
    );
    hz::schema::assert_answers_match_spec(hetzner_fake.control());
    cf::assert_answers_enveloped(cloudflare_fake.control());
}

/// A budget some other process spends: Hetzner answers 429 `rate_limit_exceeded` to more
/// attempts in a row than the client makes for one call, so the job gets the rate limit back.
/// It waits its turn without spending an attempt (a job that may try twice gets through three
/// such refusals) and the Agent runs, with no error shown.
#[tokio::test]
async fn a_job_the_budget_holds_back_waits_without_spending_attempts() {
    let fake = HetznerFake::start(hz::Options {
        action_delay: Duration::ZERO,
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let client_attempts = policy().attempts;
    let hetzner = Arc::new(hetzner_client(&fake, policy()));
    let providers = Providers::new(hetzner::cloud(hetzner));
    let settings = control::app::Settings {
        job_max_attempts: 2,
        ..control::app::Settings::default()
    };
    let h = common::Harness::with_providers(TestDb::sqlite(), |_| providers, settings).await;
    h.release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let (_, token) = h.account("Acme").await;
    let refusals = client_attempts * 3;
    fake.control().fail_next(
        &hz::Method::POST,
        "/v1/volumes",
        refusals,
        429,
        "rate_limit_exceeded",
    );
    let made = h.post("/api/agents", &token, json!({"name": "dev"})).await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    let agent = made.body["id"].as_str().unwrap().to_owned();
    h.run_jobs_until(&agent, "running").await;
    let view = h.get(&format!("/api/agents/{agent}"), &token).await.body;
    assert!(view["last_error"].is_null(), "{view:#}");
    let control = fake.control();
    assert_eq!(
        control.calls(&hz::Method::POST, "/v1/volumes"),
        u64::from(refusals) + 1,
        "every refusal was tried again, then the volume made"
    );
    assert_eq!(control.volumes().len(), 1);
    hz::schema::assert_answers_match_spec(control);
}

/// Makes `count` running Agents of `account` on Hetzner, each with a server at the fake (made
/// through the client, as provisioning would) and its row recorded as a finished provisioning:
/// a large fleet without running a thousand jobs.
async fn seed_fleet(h: &common::Harness, hetzner: &Hetzner, account: &str, count: usize) {
    use control::providers::{ServerSpec, Servers, resource_labels};
    use control::store::{NewAgent, OperationOutcome};
    use control_api::agents::{AgentOperation, PeriodState};
    use control_api::usage::ResourceKind;

    let image = h
        .release_with("2026.12.0", json!({"hetzner": "114690387"}))
        .await;
    let at = h.now();
    let mut tx = h.app.store.write().await.unwrap();
    for n in 0..count {
        let id = control::ids::new_id("agt");
        let server = hetzner
            .create_server(&ServerSpec {
                name: id.replace('_', "-").to_ascii_lowercase(),
                image: "114690387".to_owned(),
                server_type: None,
                location: None,
                labels: resource_labels(ResourceKind::Agent, &id),
                user_data: None,
                firewall_ids: Vec::new(),
                volume_ids: Vec::new(),
            })
            .await
            .unwrap();
        tx.insert_agent(&NewAgent {
            id: &id,
            account_id: account,
            name: &format!("fleet{n}"),
            provider: hetzner::NAME,
            image_id: &image,
            image_ref: "114690387",
            env: "{}",
            provisioned_at: at.as_millis(),
            cloned_from: None,
        })
        .await
        .unwrap();
        let agent = control::ledger::ResourceRef::agent(&id);
        control::ledger::open(&mut tx, agent, account, PeriodState::Paused, at)
            .await
            .unwrap();
        let outcome = OperationOutcome {
            provider_id: Some(&server.id),
            state: Some(PeriodState::Running),
            error: None,
        };
        assert!(
            tx.finish_operation(&id, AgentOperation::Provision, &outcome, at.as_millis())
                .await
                .unwrap()
        );
        control::ledger::switch(&mut tx, agent, account, PeriodState::Running, at)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// A pass over 1,000 Agents costs 20 calls (50 servers a page). On a project whose budget
/// Hetzner reports as 1,800 an hour, a quarter of it is 450 calls an hour, so the reconciler
/// runs every 160 s rather than every minute — and holds its lease that long twice over, so
/// another replica does not run the passes it leaves out.
#[tokio::test]
async fn the_reconciler_stretches_its_interval_to_stay_within_its_share() {
    use control::background::{CloudPass, Pacing, reconcile_paced, reconcile_pass};

    const FLEET: usize = 1_000;
    let fake = HetznerFake::start(hz::Options {
        rate_limit: 1_800,
        action_delay: Duration::ZERO,
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let hetzner = Arc::new(hetzner_client(&fake, policy()));
    let providers = Providers::new(hetzner::cloud(hetzner.clone()));
    let h = common::Harness::with_providers(
        TestDb::sqlite(),
        |_| providers,
        control::app::Settings::default(),
    )
    .await;
    let (account, _) = h.account("Acme").await;
    seed_fleet(&h, &hetzner, &account, FLEET).await;
    // Configured for Hetzner's 3,600; the project's answers say 1,800: the smaller counts.
    assert_eq!(hetzner.requests_per_hour(), 1_800);

    let control = fake.control();
    control.reset_calls();
    let pacing = Pacing {
        every: Duration::from_mins(1),
        budget_fraction: 0.25,
    };
    let (pass, paced) = reconcile_paced(&h.app, pacing, pacing.every)
        .await
        .unwrap()
        .expect("the only replica holds the lease");
    let cost = pass.clouds[hetzner::NAME];
    println!(
        "a pass over {} Agents: {} calls; paced interval {:?} (configured {:?}, budget {}/h, \
         share {})",
        cost.servers,
        cost.calls,
        paced.interval,
        pacing.every,
        hetzner.requests_per_hour(),
        pacing.budget_fraction
    );
    assert_eq!(pass.corrected, 0, "every server runs, as recorded");
    assert_eq!(
        cost,
        CloudPass {
            servers: FLEET,
            calls: 20
        }
    );
    assert_eq!(control.calls(&hz::Method::GET, "/v1/servers"), 20);
    assert_eq!(control.calls_total(), 20, "never a call per Agent");
    assert_eq!(paced.interval, Duration::from_secs(160));
    assert_eq!(paced.by, Some((hetzner::NAME, cost, 1_800)));

    // A second replica, past twice the configured interval but not twice the paced one.
    let other = control::app::App::new(
        h.app.store.clone(),
        h.clock.clone(),
        h.app.providers.clone(),
        h.app.settings.clone(),
    );
    h.advance(Duration::from_secs(121).as_millis().try_into().unwrap());
    assert!(
        reconcile_pass(&other, pacing.every)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(control.calls_total(), 20, "no pass was run");
    h.advance(Duration::from_secs(200).as_millis().try_into().unwrap());
    assert!(
        reconcile_pass(&other, pacing.every)
            .await
            .unwrap()
            .is_some(),
        "a replica takes over once the leader is silent for twice its interval"
    );
    hz::schema::assert_answers_match_spec(control);
}
