//! Property tests of the ledger invariants (DESIGN.md, "The ledger": 1 tiling, 2 attribution,
//! 3 conservation, 4 survival, 7 rollup idempotence) on SQLite and PostgreSQL.
//!
//! Random sequences of provision, start, stop, transfer, destroy, job runs, heartbeats, VMs
//! powered off or on behind control's back, reconciler passes and rollups are
//! applied through the lifecycle service at random instants spanning several UTC days. A small
//! reference model predicts which operations are accepted and what periods must result; the
//! database is then checked against the model and against the invariants directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use control::agents as lifecycle;
use control::app::{App, Caller, Settings};
use control::auth::Principal;
use control::clock::{Clock, ManualClock};
use control::ledger;
use control::providers::local::LocalProvider;
use control::providers::{Providers, Servers};
use control::store::Store;
use control_api::agents::{AgentOperation, PeriodState, ProvisionAgent, TransferAgent};
use control_api::{Day, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use test_support::{Backend, TestDb, proptest_cases};

const ACCOUNTS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Provision {
        account: usize,
    },
    Start {
        agent: usize,
    },
    Stop {
        agent: usize,
    },
    Destroy {
        agent: usize,
    },
    Transfer {
        agent: usize,
        to: usize,
    },
    RunJobs,
    Rollup,
    Advance {
        ms: i64,
    },
    /// The Agent's vm-agent (a process started just now) heartbeats.
    Heartbeat {
        agent: usize,
    },
    /// The VM is powered off or on behind control's back.
    PowerFlip {
        agent: usize,
    },
    /// The reconciler compares the provider with the ledger.
    Reconcile,
    /// A VM recorded paused is started outside control, and its agent reports in.
    BootOutside {
        agent: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..8usize;
    prop_oneof![
        3 => (0..ACCOUNTS).prop_map(|account| Op::Provision { account }),
        2 => agent.clone().prop_map(|agent| Op::Start { agent }),
        2 => agent.clone().prop_map(|agent| Op::Stop { agent }),
        1 => agent.clone().prop_map(|agent| Op::Destroy { agent }),
        2 => (agent.clone(), 0..ACCOUNTS).prop_map(|(agent, to)| Op::Transfer { agent, to }),
        4 => Just(Op::RunJobs),
        1 => Just(Op::Rollup),
        4 => agent.clone().prop_map(|agent| Op::Heartbeat { agent }),
        3 => agent.prop_map(|agent| Op::PowerFlip { agent }),
        2 => Just(Op::Reconcile),
        3 => (0..8usize).prop_map(|agent| Op::BootOutside { agent }),
        5 => prop_oneof![
            Just(0_i64),
            0..5_000_i64,
            0..7_200_000_i64,
            0..108_000_000_i64,
        ]
        .prop_map(|ms| Op::Advance { ms }),
    ]
}

/// What the model knows of one Agent.
#[derive(Debug)]
struct ModelAgent {
    id: String,
    account: usize,
    state: PeriodState,
    pending: Option<AgentOperation>,
    has_vm: bool,
    /// Whether the VM is powered on, whatever the ledger says.
    vm_on: bool,
    credential: Option<String>,
    provisioned_at: i64,
    destroyed_at: Option<i64>,
    /// Each observed (instant, account, state), starting at provisioning.
    changes: Vec<(i64, usize, PeriodState)>,
    audit_events: usize,
}

/// The periods the rules make of a list of changes: a change to the current (account, state)
/// is no change; a change at the very instant the open period began relabels it.
fn model_periods(agent: &ModelAgent) -> Vec<(usize, PeriodState, i64, Option<i64>)> {
    let mut periods: Vec<(usize, PeriodState, i64, Option<i64>)> = Vec::new();
    for &(at, account, state) in &agent.changes {
        if let Some(last) = periods.last_mut() {
            if (last.0, last.1) == (account, state) {
                continue;
            }
            if at <= last.2 {
                (last.0, last.1) = (account, state);
                continue;
            }
            last.3 = Some(at);
        }
        periods.push((account, state, at, None));
    }
    if let (Some(end), Some(last)) = (agent.destroyed_at, periods.last_mut()) {
        last.3 = Some(end.max(last.2));
    }
    periods
}

/// A heartbeat from a vm-agent process started this very moment.
fn heartbeat(agent_id: &str) -> control_api::agent::Heartbeat {
    serde_json::from_value(serde_json::json!({
        "agent_id": agent_id,
        "boot_id": "boot",
        "sequence": 1,
        "agent_version": "0.1.0",
        "image_version": "2026.11.0",
        "agent_uptime_s": 0,
        "cloudflared": {"state": "ready", "ready_connections": 4, "restarts": 0, "crash_loop": false},
        "slice": {"state": "mounted"},
        "host": {"cpus": 1, "load_centi": [0, 0, 0], "memory_total_bytes": 1, "memory_available_bytes": 1,
                 "root_free_bytes": 1, "uptime_s": 1}
    }))
    .unwrap()
}

fn seconds_in_day(start: i64, end: i64, day: Day) -> i64 {
    ledger::seconds(
        start.max(day.start().as_millis()),
        end.min(day.end().as_millis()),
    )
}

struct World {
    app: App,
    clock: Arc<ManualClock>,
    local: Arc<LocalProvider>,
    accounts: Vec<String>,
    agents: Vec<ModelAgent>,
    caller: Caller,
}

impl World {
    async fn new(store: Store, start: Timestamp) -> Self {
        let clock = Arc::new(ManualClock::new(start));
        let local = Arc::new(LocalProvider::in_memory());
        let app = App::new(
            store,
            clock.clone(),
            Providers::new(control::providers::local::cloud(local.clone())),
            Settings::default(),
        );
        let mut accounts = Vec::new();
        for n in 0..ACCOUNTS {
            let request = control_api::accounts::CreateAccount {
                name: format!("account {n}"),
            };
            accounts.push(
                control::accounts::create(&app, &request, None)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let image = control::images::register(
            &app,
            &control_api::images::RegisterImage {
                version: "2026.11.0".to_owned(),
                agent_version: "0.1.0".to_owned(),
                manifest_digest: common::DIGEST.to_owned(),
                refs: [("local".to_owned(), "local-2026.11.0".to_owned())].into(),
                env: BTreeMap::new(),
            },
            None,
        )
        .await
        .unwrap();
        control::images::set_current(
            &app,
            &control_api::images::SetCurrentImage { image_id: image.id },
        )
        .await
        .unwrap();
        let caller = Caller::new(
            Principal::Operator {
                token_id: "tok_property".to_owned(),
            },
            None,
        );
        Self {
            app,
            clock,
            local,
            accounts,
            agents: Vec::new(),
            caller,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    async fn apply(&mut self, op: &Op) {
        let now = self.now();
        match *op {
            Op::Advance { ms } => self.clock.advance_ms(ms),
            Op::Rollup => {
                ledger::rollup(&self.app.store, self.clock.now())
                    .await
                    .unwrap();
            }
            Op::Provision { account } => {
                let request = ProvisionAgent {
                    name: format!("box-{}", self.agents.len()),
                    account_id: Some(self.accounts[account].clone()),
                };
                let agent = lifecycle::provision(&self.app, &self.caller, &request, None)
                    .await
                    .unwrap();
                assert_eq!(agent.provisioned_at.as_millis(), now);
                self.agents.push(ModelAgent {
                    id: agent.id,
                    account,
                    state: PeriodState::Paused,
                    pending: Some(AgentOperation::Provision),
                    has_vm: false,
                    vm_on: false,
                    credential: None,
                    provisioned_at: now,
                    destroyed_at: None,
                    changes: vec![(now, account, PeriodState::Paused)],
                    audit_events: 1,
                });
            }
            Op::Start { agent } | Op::Stop { agent } | Op::Destroy { agent } => {
                if self.agents.is_empty() {
                    return;
                }
                let index = agent % self.agents.len();
                let (operation, wanted_state) = match op {
                    Op::Start { .. } => (AgentOperation::Start, Some(PeriodState::Paused)),
                    Op::Stop { .. } => (AgentOperation::Stop, Some(PeriodState::Running)),
                    _ => (AgentOperation::Destroy, None),
                };
                let model = &mut self.agents[index];
                let allowed = model.destroyed_at.is_none()
                    && model.pending.is_none()
                    && (operation == AgentOperation::Destroy || model.has_vm)
                    && wanted_state.is_none_or(|s| s == model.state);
                let result =
                    lifecycle::request(&self.app, &self.caller, &model.id, operation, None).await;
                assert_eq!(result.is_ok(), allowed, "{op:?} on {model:?}: {result:?}");
                if allowed {
                    model.pending = Some(operation);
                    model.audit_events += 1;
                }
            }
            Op::Transfer { agent, to } => {
                if self.agents.is_empty() {
                    return;
                }
                let index = agent % self.agents.len();
                let model = &mut self.agents[index];
                let allowed = model.destroyed_at.is_none() && model.account != to;
                let request = TransferAgent {
                    to_account: self.accounts[to].clone(),
                };
                let result =
                    lifecycle::transfer(&self.app, &self.caller, &model.id, &request, None).await;
                assert_eq!(result.is_ok(), allowed, "{op:?} on {model:?}: {result:?}");
                if allowed {
                    model.account = to;
                    model.changes.push((now, to, model.state));
                    model.audit_events += 1;
                }
            }
            Op::RunJobs => {
                let expected = self.agents.iter().filter(|a| a.pending.is_some()).count();
                assert_eq!(control::jobs::run_due(&self.app).await.unwrap(), expected);
                for model in &mut self.agents {
                    let Some(operation) = model.pending.take() else {
                        continue;
                    };
                    match operation {
                        AgentOperation::Provision | AgentOperation::Start => {
                            model.has_vm = true;
                            model.vm_on = true;
                            model.state = PeriodState::Running;
                            model
                                .changes
                                .push((now, model.account, PeriodState::Running));
                        }
                        AgentOperation::Stop => {
                            model.vm_on = false;
                            model.state = PeriodState::Paused;
                            model
                                .changes
                                .push((now, model.account, PeriodState::Paused));
                        }
                        AgentOperation::Destroy => {
                            model.vm_on = false;
                            model.destroyed_at = Some(now);
                        }
                    }
                }
                self.register_new_vms().await;
            }
            Op::Heartbeat { agent } => self.heartbeat(agent, now).await,
            Op::BootOutside { agent } => {
                // Among the VMs that are off with nothing under way.
                let off: Vec<usize> = (0..self.agents.len())
                    .filter(|&i| {
                        let m = &self.agents[i];
                        m.has_vm && !m.vm_on && m.destroyed_at.is_none() && m.pending.is_none()
                    })
                    .collect();
                if let Some(&index) = off.get(agent % off.len().max(1)) {
                    self.power_flip(index).await;
                    self.heartbeat(index, now).await;
                }
            }
            Op::PowerFlip { agent } => self.power_flip(agent).await,
            Op::Reconcile => {
                let every = std::time::Duration::from_mins(1);
                control::background::reconcile(&self.app, every)
                    .await
                    .unwrap();
                for model in &mut self.agents {
                    if !model.has_vm || model.destroyed_at.is_some() || model.pending.is_some() {
                        continue;
                    }
                    let observed = if model.vm_on {
                        PeriodState::Running
                    } else {
                        PeriodState::Paused
                    };
                    if observed != model.state {
                        model.state = observed;
                        model.changes.push((now, model.account, observed));
                    }
                }
            }
        }
    }

    /// The new VMs' agents register with the token their VM was given.
    async fn register_new_vms(&mut self) {
        for model in &mut self.agents {
            if model.has_vm && model.credential.is_none() && model.destroyed_at.is_none() {
                let token = self
                    .local
                    .vm(&model.id)
                    .and_then(|vm| vm.bootstrap_token)
                    .expect("a bootstrap token");
                let request = control_api::agent::RegisterRequest {
                    agent_id: model.id.clone(),
                    bootstrap_token: token,
                    boot_id: "boot".to_owned(),
                    agent_version: "0.1.0".to_owned(),
                    image_version: "2026.11.0".to_owned(),
                };
                model.credential =
                    Some(self.app.ingest.register(&request).await.unwrap().credential);
            }
        }
    }

    /// A heartbeat from the Agent's vm-agent, if its VM is on: a paused Agent with nothing
    /// under way is running from now.
    async fn heartbeat(&mut self, agent: usize, now: i64) {
        if self.agents.is_empty() {
            return;
        }
        let index = agent % self.agents.len();
        let model = &mut self.agents[index];
        let Some(credential) = model.credential.clone() else {
            return;
        };
        if !model.vm_on || model.destroyed_at.is_some() {
            return;
        }
        self.app
            .ingest
            .heartbeat(&credential, heartbeat(&model.id))
            .await
            .unwrap();
        if model.state == PeriodState::Paused && model.pending.is_none() {
            model.state = PeriodState::Running;
            model
                .changes
                .push((now, model.account, PeriodState::Running));
        }
    }

    /// Powers the VM off or on at the provider, without telling control.
    async fn power_flip(&mut self, agent: usize) {
        if self.agents.is_empty() {
            return;
        }
        let index = agent % self.agents.len();
        let model = &mut self.agents[index];
        if !model.has_vm || model.destroyed_at.is_some() || model.pending.is_some() {
            return;
        }
        if model.vm_on {
            self.local.shutdown(&model.id).await.unwrap();
        } else {
            self.local.power_on(&model.id).await.unwrap();
        }
        model.vm_on = !model.vm_on;
    }

    /// Checks every invariant against the database.
    async fn check(&self) {
        let now = self.now();
        let mut tx = self.app.store.read().await.unwrap();
        for model in &self.agents {
            let stored = tx
                .resource_periods(
                    control::ledger::ResourceRef::agent(&model.id),
                    None,
                    i64::MIN,
                    i64::MAX,
                )
                .await
                .unwrap();
            // 1. Tiling: from provisioning to destruction (or now), no gap, no overlap, at most
            // one open period, and it is open exactly while the Agent lives.
            assert_eq!(
                stored.first().map(|p| p.started_at),
                Some(model.provisioned_at),
                "{model:?}"
            );
            for pair in stored.windows(2) {
                assert_eq!(
                    pair[0].ended_at,
                    Some(pair[1].started_at),
                    "gap or overlap: {stored:?}"
                );
            }
            let open = stored.iter().filter(|p| p.ended_at.is_none()).count();
            assert_eq!(
                open,
                usize::from(model.destroyed_at.is_none()),
                "{stored:?}"
            );
            assert_eq!(
                stored.last().and_then(|p| p.ended_at),
                model.destroyed_at,
                "{stored:?}"
            );
            // 2. Attribution: every period on the account that owned the Agent then; a transfer
            // splits at its instant. 4. Survival: destroyed Agents keep their periods.
            let expected: Vec<_> = model_periods(model)
                .into_iter()
                .map(|(account, state, start, end)| {
                    (self.accounts[account].clone(), state, start, end)
                })
                .collect();
            let actual: Vec<_> = stored
                .iter()
                .map(|p| (p.account_id.clone(), p.state, p.started_at, p.ended_at))
                .collect();
            assert_eq!(actual, expected, "periods of {}", model.id);
            // 4. Survival: every accepted operation's audit event is kept.
            let events = tx
                .audit_events(&control::store::AuditFilter {
                    resource_id: Some(&model.id),
                    limit: 1_000,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(
                events.len(),
                model.audit_events,
                "audit events of {}",
                model.id
            );
        }
        drop(tx);

        // 7. Rolling up twice gives the same rows.
        ledger::rollup(&self.app.store, self.clock.now())
            .await
            .unwrap();
        let first_day = Timestamp::from_millis(
            self.agents
                .iter()
                .map(|a| a.provisioned_at)
                .min()
                .unwrap_or(now),
        )
        .day();
        let today = self.clock.now().day();
        let rows = |store: Store| async move {
            store
                .read()
                .await
                .unwrap()
                .usage(None, &first_day.to_string(), &today.to_string())
                .await
                .unwrap()
        };
        let once = rows(self.app.store.clone()).await;
        ledger::rollup(&self.app.store, self.clock.now())
            .await
            .unwrap();
        assert_eq!(
            rows(self.app.store.clone()).await,
            once,
            "a second rollup changed the rows"
        );

        // 3. Conservation, and 2. attribution of usage: rows equal what the model's periods
        // are worth per day and account, and add up to the lifetime seconds of each day.
        let mut expected: BTreeMap<(String, String, String), (i64, i64)> = BTreeMap::new();
        let mut lifetime: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut day = first_day;
        while day <= today {
            for model in &self.agents {
                let life =
                    seconds_in_day(model.provisioned_at, model.destroyed_at.unwrap_or(now), day);
                if life > 0 {
                    lifetime.insert((day.to_string(), model.id.clone()), life);
                }
                for (account, state, start, end) in model_periods(model) {
                    let secs = seconds_in_day(start, end.unwrap_or(now), day);
                    if secs > 0 {
                        let entry = expected
                            .entry((
                                day.to_string(),
                                model.id.clone(),
                                self.accounts[account].clone(),
                            ))
                            .or_default();
                        match state {
                            PeriodState::Running => entry.0 += secs,
                            PeriodState::Paused => entry.1 += secs,
                        }
                    }
                }
            }
            day = day.next();
        }
        let actual: BTreeMap<_, _> = once
            .iter()
            .map(|r| {
                (
                    (r.day.clone(), r.resource_id.clone(), r.account_id.clone()),
                    (r.running_s, r.paused_s),
                )
            })
            .collect();
        assert_eq!(actual, expected, "usage rows");
        let mut summed: BTreeMap<(String, String), i64> = BTreeMap::new();
        for row in &once {
            *summed
                .entry((row.day.clone(), row.resource_id.clone()))
                .or_default() += row.running_s + row.paused_s;
        }
        assert_eq!(
            summed, lifetime,
            "conservation: usage over accounts = lifetime seconds per day"
        );

        // Days before today are final: a later rollup leaves them alone.
        self.clock.advance_ms(3_600_000);
        ledger::rollup(&self.app.store, self.clock.now())
            .await
            .unwrap();
        let later = rows(self.app.store.clone()).await;
        let closed = |rows: &[control::store::UsageRowRecord]| {
            rows.iter()
                .filter(|r| r.day < today.to_string())
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(closed(&later), closed(&once), "a closed day changed");

        let verdict = control::audit::verify(&self.app.store).await.unwrap();
        assert!(verdict.ok, "{:?}", verdict.first_bad);
    }
}

fn run(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if backend == Backend::Postgres && test_support::postgres_server().is_none() {
        return;
    }
    let config = Config {
        // SQLite cases are cheap; each PostgreSQL case creates a database.
        cases: proptest_cases(if backend == Backend::Sqlite { 64 } else { 24 }),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    // Start somewhere in a day, a few milliseconds off the second, to exercise the tick rule.
    let scenario = (prop::collection::vec(op(), 1..64), 0..86_400_000_i64);
    TestRunner::new(config)
        .run(&scenario, |(ops, offset)| {
            runtime.block_on(async {
                let db = TestDb::new(backend).await.unwrap();
                let store = common::connect(&db).await;
                let start = Timestamp::from_millis(
                    Timestamp::parse("2026-11-01T00:00:00Z")
                        .unwrap()
                        .as_millis()
                        + offset,
                );
                let mut world = World::new(store.clone(), start).await;
                for op in &ops {
                    world.apply(op).await;
                }
                world.check().await;
                store.close().await;
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn ledger_invariants_hold_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn ledger_invariants_hold_on_postgres() {
    run(Backend::Postgres);
}
