//! Property tests of the ledger invariants (DESIGN.md, "The ledger": 1 tiling, 2 attribution,
//! 3 conservation, 4 survival, 7 rollup idempotence) on SQLite and PostgreSQL.
//!
//! Random sequences of provision, start, stop, transfer, destroy, job runs, heartbeats, VMs
//! powered off or on behind control's back, reconciler passes and rollups are
//! applied through the lifecycle service at random instants spanning several UTC days. A small
//! reference model predicts which operations are accepted and what periods must result. After
//! every step the database is read and checked against the model and, by the shared checker
//! `test_support::ledger` (its own tick rule and UTC days, never `control::ledger`'s), against
//! the invariants, including survival against what the step before read. The run counts the
//! transfers, destroys and UTC days its cases covered, and fails if any of them is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use control::agents as lifecycle;
use control::app::{App, Caller, Settings};
use control::auth::Principal;
use control::clock::{Clock, ManualClock};
use control::ledger;
use control::providers::local::LocalProvider;
use control::providers::{Providers, Servers};
use control::store::{AuditFilter, Store, Tx};
use control_api::Timestamp;
use control_api::agents::{AgentOperation, PeriodState, ProvisionAgent, TransferAgent};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use test_support::ledger::{
    self as checker, Day, Kind, Lifetime, Period, Resource, RolledUp, Snapshot, Transfer, Usage,
};
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
        2 => agent.clone().prop_map(|agent| Op::Destroy { agent }),
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

/// Every period in the store, as the checker sees them: the one place this test reads periods
/// (and knows `PeriodRow`'s fields), so a change of the store's period API is made here only.
async fn stored_periods(tx: &mut Tx) -> Vec<Period> {
    tx.periods_overlapping(i64::MIN, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|p| Period {
            resource: Resource::new(p.resource_kind.into(), &p.resource_id),
            account: p.account_id,
            state: p.state.into(),
            started_at: p.started_at,
            ended_at: p.ended_at,
        })
        .collect()
}

fn agent_lifetime(id: &str, provisioned_at: i64, destroyed_at: Option<i64>) -> Lifetime {
    Lifetime {
        resource: Resource::agent(id),
        provisioned_at,
        destroyed_at,
    }
}

/// Every usage row in the store, as the checker sees them.
async fn stored_usage(tx: &mut Tx) -> Vec<Usage> {
    tx.usage(None, "0000-01-01", "9999-12-31")
        .await
        .unwrap()
        .into_iter()
        .map(|r| Usage {
            day: Day::parse(&r.day).unwrap(),
            resource: Resource::new(r.resource_kind.into(), &r.resource_id),
            account: r.account_id,
            running_s: r.running_s,
            paused_s: r.paused_s,
        })
        .collect()
}

/// What the whole run covered, so that it can fail if the generated cases miss a feature.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    steps_checked: usize,
    transfers: usize,
    destroys: usize,
    rollups: usize,
    cases_over_several_days: usize,
    most_days: i64,
}

impl Coverage {
    fn add(&mut self, case: &Self) {
        self.cases += case.cases;
        self.steps_checked += case.steps_checked;
        self.transfers += case.transfers;
        self.destroys += case.destroys;
        self.rollups += case.rollups;
        self.cases_over_several_days += case.cases_over_several_days;
        self.most_days = self.most_days.max(case.most_days);
    }
}

struct World {
    app: App,
    clock: Arc<ManualClock>,
    local: Arc<LocalProvider>,
    accounts: Vec<String>,
    agents: Vec<ModelAgent>,
    caller: Caller,
    /// The instant of the last rollup, which today's usage rows count up to.
    rolled_up_at: Option<i64>,
    /// What the last check read, for survival.
    previous: Option<Snapshot>,
    steps_checked: usize,
    transfers: usize,
    destroys: usize,
    rollups: usize,
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
            rolled_up_at: None,
            previous: None,
            steps_checked: 0,
            transfers: 0,
            destroys: 0,
            rollups: 0,
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    async fn apply(&mut self, op: &Op) {
        let now = self.now();
        match *op {
            Op::Advance { ms } => self.clock.advance_ms(ms),
            Op::Rollup => self.rollup_twice().await,
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
                    self.transfers += 1;
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
                            self.destroys += 1;
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

    /// 7. Rolls up twice at this instant: the second rollup must give the same rows.
    async fn rollup_twice(&mut self) {
        let mut rows = Vec::new();
        for _ in 0..2 {
            ledger::rollup(&self.app.store, self.clock.now())
                .await
                .unwrap();
            rows.push(stored_usage(&mut self.app.store.read().await.unwrap()).await);
        }
        checker::assert_none(
            &checker::same_rollup(&rows[0], &rows[1]),
            "rolling up twice",
        );
        self.rolled_up_at = Some(self.now());
        self.rollups += 1;
    }

    /// Reads the ledger in one snapshot, with the number of audit events of each resource.
    async fn read(&self) -> (Snapshot, BTreeMap<String, usize>) {
        let mut tx = self.app.store.read().await.unwrap();
        let lifetimes = tx
            .agents(None, None, true, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|a| agent_lifetime(&a.id, a.provisioned_at, a.destroyed_at))
            .collect();
        let periods = stored_periods(&mut tx).await;
        let usage = stored_usage(&mut tx).await;
        let events = tx
            .audit_events(&AuditFilter {
                limit: 100_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut audit_events: BTreeMap<String, usize> = BTreeMap::new();
        for event in &events {
            *audit_events.entry(event.resource_id.clone()).or_default() += 1;
        }
        let transfers = events
            .into_iter()
            .filter(|e| e.action.ends_with(".transfer"))
            .map(|e| Transfer {
                resource: Resource::new(Kind::parse(&e.resource_kind).unwrap(), &e.resource_id),
                at: e.at,
                from: e.account_id,
                to: e.to_account_id.expect("a transfer names its destination"),
            })
            .collect();
        let rolled_up = tx.rollup_state().await.unwrap().ran_at.map(RolledUp::at);
        let snapshot = Snapshot {
            lifetimes,
            periods,
            usage,
            transfers,
            rolled_up,
            settled: Some(self.now()),
        };
        (snapshot, audit_events)
    }

    /// The periods the model predicts for one Agent, as the checker sees them.
    fn model_periods(&self, model: &ModelAgent) -> Vec<Period> {
        model_periods(model)
            .into_iter()
            .map(|(account, state, started_at, ended_at)| Period {
                resource: Resource::agent(&model.id),
                account: self.accounts[account].clone(),
                state: state.into(),
                started_at,
                ended_at,
            })
            .collect()
    }

    /// Checks the database after a step: against the invariants (and, for survival, against
    /// what the step before read), and against the model.
    async fn check(&mut self, step: &str) {
        let (snapshot, audit_events) = self.read().await;
        checker::assert_none(&checker::check(&snapshot, self.previous.as_ref()), step);

        // The lifetimes and periods the model predicts: 1. tiling from provisioning to
        // destruction, 2. every period on the account that owned the Agent then, a transfer
        // splitting at its instant, 4. destroyed Agents keep their periods.
        let mut lifetimes = snapshot.lifetimes.clone();
        lifetimes.sort_by(|a, b| a.resource.cmp(&b.resource));
        let mut expected_lifetimes: Vec<Lifetime> = self
            .agents
            .iter()
            .map(|m| agent_lifetime(&m.id, m.provisioned_at, m.destroyed_at))
            .collect();
        expected_lifetimes.sort_by(|a, b| a.resource.cmp(&b.resource));
        assert_eq!(lifetimes, expected_lifetimes, "lifetimes, {step}");
        let mut expected_periods = Vec::new();
        for model in &self.agents {
            let resource = Resource::agent(&model.id);
            let stored: Vec<&Period> = snapshot
                .periods
                .iter()
                .filter(|p| p.resource == resource)
                .collect();
            let expected = self.model_periods(model);
            assert_eq!(
                stored,
                expected.iter().collect::<Vec<_>>(),
                "periods of {}, {step}",
                model.id
            );
            // 4. Survival: every accepted operation's audit event is kept.
            assert_eq!(
                audit_events.get(&model.id).copied().unwrap_or(0),
                model.audit_events,
                "audit events of {}, {step}",
                model.id
            );
            expected_periods.extend(expected);
        }
        assert_eq!(
            snapshot.periods.len(),
            expected_periods.len(),
            "periods of Agents the model does not know, {step}"
        );

        // 3. Conservation and 2. attribution of usage: the rows are what the model's periods
        // are worth per day and account, counted up to the last rollup.
        assert_eq!(
            snapshot.rolled_up,
            self.rolled_up_at.map(RolledUp::at),
            "the rollup's instant, {step}"
        );
        let expected_usage = self
            .rolled_up_at
            .map(|at| checker::expected_usage(&expected_periods, at))
            .unwrap_or_default();
        let mut usage = snapshot.usage.clone();
        usage.sort();
        assert_eq!(usage, expected_usage, "usage rows, {step}");

        self.previous = Some(snapshot);
        self.steps_checked += 1;
    }

    /// The last checks of a case: a rollup (twice, 7) counts everything up to now; an hour
    /// later another leaves the days before final (4, against the check before); the audit
    /// chain verifies.
    async fn finish(&mut self) {
        self.rollup_twice().await;
        self.check("after the last rollup").await;
        self.clock.advance_ms(3_600_000);
        self.rollup_twice().await;
        self.check("after a rollup an hour later").await;

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
    let coverage = Mutex::new(Coverage::default());
    TestRunner::new(config)
        .run(&scenario, |(ops, offset)| {
            let case = runtime.block_on(async {
                let db = TestDb::new(backend).await.unwrap();
                let store = common::connect(&db).await;
                let start = Timestamp::from_millis(
                    Timestamp::parse("2026-11-01T00:00:00Z")
                        .unwrap()
                        .as_millis()
                        + offset,
                );
                let mut world = World::new(store.clone(), start).await;
                world.check("before any step").await;
                for (n, op) in ops.iter().enumerate() {
                    world.apply(op).await;
                    world.check(&format!("after step {n}, {op:?}")).await;
                }
                let days = Day::of(world.now()).0 - Day::of(start.as_millis()).0 + 1;
                let rollups = world.rollups;
                world.finish().await;
                store.close().await;
                Coverage {
                    cases: 1,
                    steps_checked: world.steps_checked,
                    transfers: world.transfers,
                    destroys: world.destroys,
                    rollups,
                    cases_over_several_days: usize::from(days > 1),
                    most_days: days,
                }
            });
            coverage.lock().unwrap().add(&case);
            Ok(())
        })
        .unwrap();
    let c = coverage.into_inner().unwrap();
    eprintln!(
        "ledger_props on {backend:?}: {} cases, {} steps checked, {} transfers, {} destroys, \
         {} rollups, {} cases over several UTC days (at most {} days)",
        c.cases,
        c.steps_checked,
        c.transfers,
        c.destroys,
        c.rollups,
        c.cases_over_several_days,
        c.most_days
    );
    // Each is all but certain at the default number of cases (see the counts printed above).
    assert!(c.transfers > 0, "no case transferred an Agent: {c:?}");
    assert!(c.destroys > 0, "no case destroyed an Agent: {c:?}");
    assert!(c.rollups > 0, "no case rolled up usage mid-way: {c:?}");
    assert!(c.most_days > 1, "no case spanned several UTC days: {c:?}");
}

#[test]
fn ledger_invariants_hold_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn ledger_invariants_hold_on_postgres() {
    run(Backend::Postgres);
}
