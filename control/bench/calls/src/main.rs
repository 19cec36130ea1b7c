//! The provider call-budget benchmark.
//!
//! Runs control in this process, as a library (the same code `control serve` runs: its router,
//! its job runner, its Hetzner and Cloudflare clients over loopback HTTP), against the
//! in-process fakes of Hetzner Cloud and Cloudflare, on a fresh SQLite database:
//!
//! 1. N Agents through their life: provisioned, stopped, started and destroyed through the API,
//!    each operation's jobs run to the end. The fakes count every call by route. Printed per
//!    operation: the calls made per Agent, by route, next to the floor — the calls the
//!    operation cannot do without: one per resource created or deleted, one per power change,
//!    and the tunnel's token (the server's first boot needs it, and only a call gives it) —
//!    with their ratio and the goal (at most 1.5x the floor per provisioned Agent).
//! 2. The reconciler over fleets of 1,000 and 10,000 running Agents (servers made at the fake
//!    through the client, rows seeded): the calls one pass costs, measured, the interval the
//!    pacing picks, and the calls an hour that makes next to the budget and its share.
//!
//! The job runner's clock is a manual one, moved on between runs (as the tests do), so waits
//! cost no wall time. The Hetzner fake finishes each action by the next call, so a step that
//! waits for a server to start or stop looks once; against Hetzner, where that takes seconds,
//! such a step looks again every 5 s, and those looks come on top.
//!
//! `bash control/bench/calls.sh --help` lists the options.

#![allow(clippy::cast_precision_loss)] // figures for people: counts far below 2^52

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use control::app::{App, Settings};
use control::background::{Pacing, reconcile_paced};
use control::clock::{ManualClock, SystemClock};
use control::providers::cloudflare::{Cloudflare, CloudflareConfig};
use control::providers::hetzner::{self, Hetzner, HetznerConfig};
use control::providers::{Providers, Secret, ServerSpec, Servers, resource_labels};
use control::store::{NewAgent, OperationOutcome, Store, StoreOptions};
use control_api::Timestamp;
use control_api::accounts::CreateToken;
use control_api::agents::{AgentOperation, PeriodState};
use control_api::usage::ResourceKind;
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The goal: calls per provisioned Agent at most this many times the floor.
const GOAL_RATIO: f64 = 1.5;
/// Debian 12 in the Hetzner fake's catalogue.
const IMAGE: &str = "114690387";
/// A budget the benchmark never meets: it counts calls, it does not pace them.
const UNLIMITED: u32 = 100_000_000;

#[derive(Debug, Parser)]
#[command(
    about = "Provider calls per Agent and per operation next to the floor, and the \
                   reconciler's calls an hour next to the budget"
)]
struct Args {
    /// Agents taken through provision, stop, start and destroy.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Fleet sizes whose reconciler passes are measured, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fleets: Vec<usize>,
    /// The Hetzner project's requests an hour.
    #[arg(long, default_value_t = hetzner::REQUESTS_PER_HOUR)]
    budget: u32,
    /// The reconciler's share of it (`[reconciler] budget_fraction`).
    #[arg(long, default_value_t = control::config::DEFAULT_RECONCILE_BUDGET_FRACTION)]
    fraction: f64,
    /// The reconciler's configured interval (`[reconciler] interval_secs`).
    #[arg(long, default_value_t = 60)]
    every_secs: u64,
}

/// An operation and its floor: the calls it cannot do without, per Agent, by route.
struct Operation {
    name: &'static str,
    floor: &'static [(&'static str, &'static str, &'static str)],
}

const CFD_TUNNEL: &str = "/client/v4/accounts/{account_id}/cfd_tunnel";

const PROVISION: Operation = Operation {
    name: "provision",
    floor: &[
        ("cloudflare", "POST", CFD_TUNNEL),
        (
            "cloudflare",
            "GET",
            "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/token",
        ),
        (
            "cloudflare",
            "PUT",
            "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
        ),
        (
            "cloudflare",
            "POST",
            "/client/v4/zones/{zone_id}/dns_records",
        ),
        ("hetzner", "POST", "/v1/firewalls"),
        ("hetzner", "POST", "/v1/volumes"),
        ("hetzner", "POST", "/v1/servers"),
    ],
};
const STOP: Operation = Operation {
    name: "stop",
    floor: &[("hetzner", "POST", "/v1/servers/{id}/actions/shutdown")],
};
const START: Operation = Operation {
    name: "start",
    floor: &[("hetzner", "POST", "/v1/servers/{id}/actions/poweron")],
};
const DESTROY: Operation = Operation {
    name: "destroy",
    floor: &[
        ("hetzner", "DELETE", "/v1/servers/{id}"),
        ("hetzner", "DELETE", "/v1/volumes/{id}"),
        ("hetzner", "DELETE", "/v1/firewalls/{id}"),
        (
            "cloudflare",
            "DELETE",
            "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}",
        ),
        (
            "cloudflare",
            "DELETE",
            "/client/v4/zones/{zone_id}/dns_records/{dns_record_id}",
        ),
    ],
};

/// Calls by (provider, method, route template).
type Counts = BTreeMap<(String, String, String), u64>;

/// Control in this process, over the two fakes.
struct Rig {
    app: App,
    clock: Arc<ManualClock>,
    router: axum::Router,
    operator: String,
    hetzner_fake: HetznerFake,
    cloudflare_fake: CloudflareFake,
    hetzner: Arc<Hetzner>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A rig whose Hetzner project allows `budget` requests an hour (its fake never refuses).
    async fn start(budget: u32) -> anyhow::Result<Self> {
        let hetzner_fake = HetznerFake::start(hz::Options {
            rate_limit: UNLIMITED,
            refill_per_second: Some(f64::from(UNLIMITED)),
            action_delay: Duration::ZERO,
            record_answers: false,
            ..hz::Options::default()
        })
        .await?;
        let cloudflare_fake = CloudflareFake::start(cf::Options {
            rate_limit: UNLIMITED,
            record_answers: false,
            ..cf::Options::default()
        })
        .await?;
        let mut config = HetznerConfig::new(Secret(hetzner_fake.token().to_owned()));
        config.base_url = hetzner_fake.url();
        config.requests_per_hour = budget;
        let hetzner = Arc::new(Hetzner::new(config, Arc::new(SystemClock))?);
        let tunnels = Cloudflare::new(
            CloudflareConfig {
                base_url: cloudflare_fake.url(),
                token: Secret(cloudflare_fake.token().to_owned()),
                account_id: cloudflare_fake.account_id().to_owned(),
                zone_id: cloudflare_fake.zone_id().to_owned(),
                retry: control::providers::http::RetryPolicy::default(),
            },
            Arc::new(SystemClock),
        )?;
        let providers =
            Providers::new(hetzner::cloud(hetzner.clone())).with_tunnels(Arc::new(tunnels));
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = Store::connect(&url, &StoreOptions::default()).await?;
        store.migrate().await?;
        let clock = Arc::new(ManualClock::new(Timestamp::parse("2026-11-20T09:00:00Z")?));
        let settings = Settings {
            agent_domain: cloudflare_fake.zone_name().to_owned(),
            ..Settings::default()
        };
        let app = App::new(store, clock.clone(), providers, settings);
        let operator = control::accounts::create_token(&app, None, &CreateToken::default(), None)
            .await?
            .token;
        Ok(Self {
            router: control::http::router(app.clone()),
            app,
            clock,
            operator,
            hetzner_fake,
            cloudflare_fake,
            hetzner,
            _dir: dir,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(bytes))?)
            .await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)?
        };
        Ok((status, body))
    }

    /// `call`, which must answer `expected`; returns the body.
    async fn expect(
        &self,
        expected: u16,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method.clone(), path, token, body).await?;
        ensure!(
            status.as_u16() == expected,
            "{method} {path} answered {status}: {body:#}"
        );
        Ok(body)
    }

    /// Registers a release with the fake's image; returns its id.
    async fn release(&self) -> anyhow::Result<String> {
        let image = self
            .expect(
                201,
                Method::POST,
                "/api/images",
                &self.operator,
                Some(json!({
                    "version": "2026.12.0",
                    "agent_version": "0.1.0",
                    "manifest_digest": format!("sha256:{}", "1".repeat(64)),
                    "refs": {"hetzner": IMAGE},
                    "env": {"PLATFORM_RELEASE": "2026.12.0"},
                })),
            )
            .await?;
        let id = image["id"].as_str().context("image id")?.to_owned();
        self.expect(
            200,
            Method::PUT,
            "/api/images/current",
            &self.operator,
            Some(json!({"image_id": id})),
        )
        .await?;
        Ok(id)
    }

    /// An account and its token: (account id, bearer).
    async fn account(&self) -> anyhow::Result<(String, String)> {
        let account = self
            .expect(
                201,
                Method::POST,
                "/api/accounts",
                &self.operator,
                Some(json!({"name": "Bench"})),
            )
            .await?;
        let id = account["id"].as_str().context("account id")?.to_owned();
        let token = self
            .expect(
                201,
                Method::POST,
                &format!("/api/accounts/{id}/tokens"),
                &self.operator,
                Some(json!({})),
            )
            .await?;
        Ok((id, token["token"].as_str().context("token")?.to_owned()))
    }

    /// Runs the jobs until no Agent has an operation under way, moving the jobs' clock on
    /// between runs; every Agent must then be `state` with no error.
    async fn settle(&self, state: &str) -> anyhow::Result<()> {
        for _ in 0..500 {
            control::jobs::run_due(&self.app).await?;
            let mut busy = 0;
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    None => "/api/agents?limit=200".to_owned(),
                    Some(after) => format!("/api/agents?limit=200&cursor={after}"),
                };
                let page = self
                    .expect(200, Method::GET, &path, &self.operator, None)
                    .await?;
                for agent in page["items"].as_array().context("items")? {
                    if agent["operation"].is_null() {
                        ensure!(
                            agent["state"] == state && agent["last_error"].is_null(),
                            "an Agent ended {} with {}",
                            agent["state"],
                            agent["last_error"]
                        );
                    } else {
                        busy += 1;
                    }
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            if busy == 0 {
                return Ok(());
            }
            self.clock.advance_ms(6_000);
        }
        anyhow::bail!("the Agents never became {state}")
    }

    fn reset_calls(&self) {
        self.hetzner_fake.control().reset_calls();
        self.cloudflare_fake.control().reset_calls();
    }

    fn counts(&self) -> Counts {
        let mut counts = Counts::new();
        for (provider, calls) in [
            ("hetzner", self.hetzner_fake.control().call_counts()),
            ("cloudflare", self.cloudflare_fake.control().call_counts()),
        ] {
            for ((method, template), n) in calls {
                counts.insert((provider.to_owned(), method, template), n);
            }
        }
        counts
    }

    fn refused(&self) -> u64 {
        self.hetzner_fake.control().rate_limited_calls()
            + self.cloudflare_fake.control().rate_limited_calls()
    }
}

/// One operation's figures.
struct Measured {
    counts: Counts,
    elapsed: Duration,
}

/// Takes `count` Agents through their life; each operation's calls by route.
async fn lifecycle(count: usize) -> anyhow::Result<Vec<(&'static Operation, Measured)>> {
    let rig = Rig::start(hetzner::REQUESTS_PER_HOUR).await?;
    rig.release().await?;
    let (_, token) = rig.account().await?;
    let mut measured = Vec::new();

    rig.reset_calls();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let made = rig
            .expect(
                202,
                Method::POST,
                "/api/agents",
                &token,
                Some(json!({"name": format!("bench{n}")})),
            )
            .await?;
        ids.push(made["id"].as_str().context("agent id")?.to_owned());
    }
    rig.settle("running").await?;
    measured.push((
        &PROVISION,
        Measured {
            counts: rig.counts(),
            elapsed: started.elapsed(),
        },
    ));

    for (operation, method, suffix, state) in [
        (&STOP, Method::POST, "/stop", "paused"),
        (&START, Method::POST, "/start", "running"),
        (&DESTROY, Method::DELETE, "", "destroyed"),
    ] {
        rig.reset_calls();
        let started = Instant::now();
        for id in &ids {
            let body = (method == Method::POST).then(|| json!({}));
            rig.expect(
                202,
                method.clone(),
                &format!("/api/agents/{id}{suffix}"),
                &token,
                body,
            )
            .await?;
        }
        rig.settle(state).await?;
        measured.push((
            operation,
            Measured {
                counts: rig.counts(),
                elapsed: started.elapsed(),
            },
        ));
    }
    ensure!(rig.refused() == 0, "a fake answered 429");
    let hetzner = rig.hetzner_fake.control();
    ensure!(
        hetzner.servers().is_empty() && hetzner.volumes().is_empty(),
        "resources left at Hetzner"
    );
    ensure!(
        rig.cloudflare_fake.control().live_tunnels().is_empty(),
        "tunnels left at Cloudflare"
    );
    Ok(measured)
}

/// What a reconciler pass over a fleet cost, and the interval the pacing picked.
struct FleetPass {
    agents: usize,
    calls: u64,
    interval: Duration,
    seeded_in: Duration,
}

/// Seeds `count` running Agents (servers at the fake, rows in the store) and runs one pass.
async fn reconcile_fleet(count: usize, pacing: Pacing, budget: u32) -> anyhow::Result<FleetPass> {
    let rig = Rig::start(budget).await?;
    let image = rig.release().await?;
    let (account, _) = rig.account().await?;
    let started = Instant::now();
    let at = control::clock::Clock::now(&*rig.clock);
    let mut tx = rig.app.store.write().await?;
    for n in 0..count {
        let id = control::ids::new_id("agt");
        let server = rig
            .hetzner
            .create_server(&ServerSpec {
                name: id.replace('_', "-").to_ascii_lowercase(),
                image: IMAGE.to_owned(),
                server_type: None,
                location: None,
                labels: resource_labels(ResourceKind::Agent, &id),
                user_data: None,
                firewall_ids: Vec::new(),
                volume_ids: Vec::new(),
            })
            .await?;
        tx.insert_agent(&NewAgent {
            id: &id,
            account_id: &account,
            name: &format!("fleet{n}"),
            provider: hetzner::NAME,
            image_id: &image,
            image_ref: IMAGE,
            env: "{}",
            provisioned_at: at.as_millis(),
            cloned_from: None,
        })
        .await?;
        let agent = control::ledger::ResourceRef::agent(&id);
        control::ledger::open(&mut tx, agent, &account, PeriodState::Paused, at).await?;
        let outcome = OperationOutcome {
            provider_id: Some(&server.id),
            state: Some(PeriodState::Running),
            error: None,
        };
        ensure!(
            tx.finish_operation(&id, AgentOperation::Provision, &outcome, at.as_millis())
                .await?
        );
        control::ledger::switch(&mut tx, agent, &account, PeriodState::Running, at).await?;
    }
    tx.commit().await?;
    let seeded_in = started.elapsed();
    rig.reset_calls();
    let (pass, paced) = reconcile_paced(&rig.app, pacing, pacing.every)
        .await?
        .context("the only replica holds the lease")?;
    let calls = rig.hetzner_fake.control().calls_total();
    let cost = pass.clouds.get(hetzner::NAME).copied().unwrap_or_default();
    ensure!(
        cost.calls == calls && cost.servers == count && pass.corrected == 0,
        "the pass counted {cost:?}, the fake {calls} calls"
    );
    ensure!(
        calls == u64::try_from(count.div_ceil(50).max(1))?,
        "a pass over {count} Agents cost {calls} calls"
    );
    let interval = control::background::paced_interval(
        pacing.every,
        cost.calls,
        budget,
        pacing.budget_fraction,
    );
    ensure!(
        interval == paced.interval,
        "the reconciler picked {:?}, the arithmetic {interval:?}",
        paced.interval
    );
    Ok(FleetPass {
        agents: count,
        calls,
        interval,
        seeded_in,
    })
}

fn print_operation(operation: &Operation, measured: &Measured, agents: usize) -> f64 {
    let per_agent = |n: u64| n as f64 / agents as f64;
    let floor: BTreeMap<(String, String, String), u64> = operation
        .floor
        .iter()
        .map(|(p, m, t)| (((*p).to_owned(), (*m).to_owned(), (*t).to_owned()), 1))
        .collect();
    let mut routes: Vec<_> = measured.counts.keys().chain(floor.keys()).collect();
    routes.sort();
    routes.dedup();
    let title = format!(
        "{} ({} Agents in {:.1} s)",
        operation.name,
        agents,
        measured.elapsed.as_secs_f64()
    );
    println!("\n{title:<87}calls/Agent{:>8}", "floor");
    for route in routes {
        let (provider, method, template) = route;
        let made = measured.counts.get(route).copied().unwrap_or(0);
        let floor = floor.get(route).copied().unwrap_or(0);
        println!(
            "  {provider:<10} {method:<6} {template:<72} {:>6.2} {floor:>7}",
            per_agent(made)
        );
    }
    let made: u64 = measured.counts.values().sum();
    let floor_total = operation.floor.len();
    let ratio = per_agent(made) / floor_total as f64;
    println!(
        "  {:<90} {:>6.2} {floor_total:>7}   {ratio:.2}x the floor",
        "total",
        per_agent(made)
    );
    ratio
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.agents > 0, "--agents must be at least 1");
    println!(
        "provider call budget: {} Agents provisioned, stopped, started and destroyed through \
         control's API against the Hetzner and Cloudflare fakes (calls counted by the fakes)",
        args.agents
    );
    let measured = lifecycle(args.agents).await?;
    let mut life = (0.0, 0);
    let mut provision_ratio = 0.0;
    for (operation, figures) in &measured {
        let ratio = print_operation(operation, figures, args.agents);
        if operation.name == PROVISION.name {
            provision_ratio = ratio;
        }
        life.0 += figures.counts.values().sum::<u64>() as f64 / args.agents as f64;
        life.1 += operation.floor.len();
    }
    println!(
        "\nwhole life: {:.2} calls per Agent, floor {}, {:.2}x (no 429 answered: checked)",
        life.0,
        life.1,
        life.0 / life.1 as f64
    );
    let met = |ok: bool| if ok { "met" } else { "missed" };
    println!(
        "goal: calls per provisioned Agent <= {GOAL_RATIO}x the floor: {:.2}x ({})",
        provision_ratio,
        met(provision_ratio <= GOAL_RATIO)
    );

    let pacing = Pacing {
        every: Duration::from_secs(args.every_secs),
        budget_fraction: args.fraction,
    };
    let share = f64::from(args.budget) * args.fraction;
    println!(
        "\nreconciler: a pass every {} s at most, within {} of the {}/h budget ({share:.0} calls/h)",
        args.every_secs, args.fraction, args.budget
    );
    println!(
        "  Agents   calls/pass   interval   calls/hour   of budget   unpaced (every {} s)",
        args.every_secs
    );
    for fleet in &args.fleets {
        let pass = reconcile_fleet(*fleet, pacing, args.budget).await?;
        let per_hour = pass.calls as f64 * 3_600.0 / pass.interval.as_secs_f64();
        let unpaced = pass.calls as f64 * 3_600.0 / pacing.every.as_secs_f64();
        println!(
            "  {:>6}   {:>10}   {:>7.0} s   {per_hour:>10.0}   {:>8.1}%   {unpaced:.0}/h, {:.1}% \
             (seeded in {:.1} s)",
            pass.agents,
            pass.calls,
            pass.interval.as_secs_f64(),
            100.0 * per_hour / f64::from(args.budget),
            100.0 * unpaced / f64::from(args.budget),
            pass.seeded_in.as_secs_f64(),
        );
        ensure!(
            per_hour <= share * (1.0 + 1e-9),
            "the reconciler's calls an hour exceed its share"
        );
    }
    println!(
        "goal: a pass over N Agents costs ceil(N/50) calls, and the reconciler stays within {} \
         of the budget however many Agents: met (each checked above)",
        args.fraction
    );
    Ok(())
}
