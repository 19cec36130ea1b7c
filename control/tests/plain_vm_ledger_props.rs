//! Property tests of the ledger invariants for Plain VMs (DESIGN.md, "The ledger": 1 tiling,
//! 2 attribution, 3 conservation as existence billing, 4 survival, 7 rollup idempotence) on
//! SQLite and PostgreSQL.
//!
//! Random sequences of provisioning (on one of three accounts), start, stop, destroy,
//! transfer, job runs, rollups and clock jumps (some to a few milliseconds either side of a UTC
//! midnight) are applied through the Plain VM service at instants spanning several UTC days;
//! the in-memory local provider confirms every operation at once. A small reference model
//! predicts which requests are accepted, why the others are refused, and what periods must
//! result. After every step the database is read and checked against the model and, by the
//! shared checker `test_support::ledger` (its own tick rule and UTC days, never
//! `control::ledger`'s), against the invariants, including survival against what the step
//! before read. A Plain VM bills its existence: every usage second is `running_s`, stopped
//! time included, so a VM's rows of a day add up to the seconds of that day it existed, read
//! off its lifetime alone. The run counts the refusals, transfers, destroys, stopped spells
//! billed, mid-way rollups and VMs billed across midnight it covered, and fails if any of them
//! is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use control::app::{App, Caller, Settings};
use control::auth::Principal;
use control::clock::{Clock, ManualClock};
use control::error::Error;
use control::ledger;
use control::plain_vms;
use control::providers::Providers;
use control::providers::local::LocalProvider;
use control::store::{AuditFilter, PlainVmRow, Store, Tx};
use control_api::Timestamp;
use control_api::agents::{AgentOperation, PeriodState};
use control_api::plain_vms::{PlainVm, PlainVmState, ProvisionPlainVm, TransferPlainVm};
use control_api::vault::AddVaultKey;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use test_support::ledger::{
    self as checker, Day, Kind, Lifetime, MILLIS_PER_DAY, Period, Resource, RolledUp, Snapshot,
    Transfer, Usage,
};
use test_support::{Backend, TestDb, proptest_cases};

const ACCOUNTS: usize = 3;

/// The Vault key every account holds.
const PUBLIC_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice";

#[derive(Clone, Debug)]
enum Op {
    Provision {
        account: usize,
    },
    Start {
        vm: usize,
    },
    Stop {
        vm: usize,
    },
    Destroy {
        vm: usize,
    },
    Transfer {
        vm: usize,
        to: usize,
    },
    /// Runs the due jobs; the in-memory provider confirms each at once.
    RunJobs,
    Rollup,
    Advance {
        ms: i64,
    },
    /// To `offset_ms` from the next UTC midnight (from the one after, if that is behind).
    Midnight {
        offset_ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let vm = 0..8usize;
    prop_oneof![
        3 => (0..ACCOUNTS).prop_map(|account| Op::Provision { account }),
        3 => vm.clone().prop_map(|vm| Op::Start { vm }),
        4 => vm.clone().prop_map(|vm| Op::Stop { vm }),
        3 => vm.clone().prop_map(|vm| Op::Destroy { vm }),
        3 => (vm, 0..ACCOUNTS).prop_map(|(vm, to)| Op::Transfer { vm, to }),
        6 => Just(Op::RunJobs),
        2 => Just(Op::Rollup),
        5 => prop_oneof![
            Just(0_i64),
            0..5_000_i64,
            0..7_200_000_i64,
            0..108_000_000_i64,
        ]
        .prop_map(|ms| Op::Advance { ms }),
        1 => (-3_000..3_000_i64).prop_map(|offset_ms| Op::Midnight { offset_ms }),
    ]
}

/// What the model knows of one Plain VM.
#[derive(Debug)]
struct ModelVm {
    id: String,
    account: usize,
    /// `Paused` is stopped (the ledger's word for it).
    state: PeriodState,
    pending: Option<AgentOperation>,
    has_server: bool,
    provisioned_at: i64,
    destroyed_at: Option<i64>,
    /// Each (instant, account, state) the ledger was told of, starting at provisioning.
    changes: Vec<(i64, usize, PeriodState)>,
    /// The spells `[from, to)` between a confirmed stop and the next start or destruction.
    stopped: Vec<(i64, Option<i64>)>,
    audit_events: usize,
}

/// What the model expects of a request.
#[derive(Debug)]
enum Verdict {
    Accepted,
    /// 409, with these words in its message.
    Conflict(String),
    /// 422 naming `to_account`, with these words in its message.
    Invalid(&'static str),
}

impl ModelVm {
    /// The rules of `begin_plain_vm_operation` and of the refusal's words: nothing on a
    /// destroyed VM or while an operation is under way; start and stop need the server and
    /// the other state; destroy needs neither.
    fn verdict(&self, operation: AgentOperation) -> Verdict {
        let conflict = |words: &str| Verdict::Conflict(words.to_owned());
        if self.destroyed_at.is_some() {
            return conflict("is destroyed");
        }
        if let Some(pending) = self.pending {
            let verb = match pending {
                AgentOperation::Provision => "provisioning",
                AgentOperation::Start => "start",
                AgentOperation::Stop => "stop",
                AgentOperation::Destroy => "destroy",
            };
            return conflict(&format!("has a {verb} in progress"));
        }
        match (operation, self.state) {
            (AgentOperation::Destroy, _) => Verdict::Accepted,
            _ if !self.has_server => conflict("has no server"),
            (AgentOperation::Start, PeriodState::Running) => conflict("is already running"),
            (AgentOperation::Stop, PeriodState::Paused) => conflict("is already stopped"),
            _ => Verdict::Accepted,
        }
    }

    /// The ledger is told that from `at` on the VM is `state` on its account.
    fn observe(&mut self, at: i64, state: PeriodState) {
        self.state = state;
        self.changes.push((at, self.account, state));
    }

    fn end_stopped_spell(&mut self, at: i64) {
        if let Some(spell) = self.stopped.last_mut().filter(|s| s.1.is_none()) {
            spell.1 = Some(at);
        }
    }

    /// The periods the rules make of the changes: a change to the current (account, state) is
    /// no change; a change at the very instant the open period began relabels it; destruction
    /// closes the last.
    fn periods(&self) -> Vec<(usize, PeriodState, i64, Option<i64>)> {
        let mut periods: Vec<(usize, PeriodState, i64, Option<i64>)> = Vec::new();
        for &(at, account, state) in &self.changes {
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
        if let (Some(end), Some(last)) = (self.destroyed_at, periods.last_mut()) {
            last.3 = Some(end.max(last.2));
        }
        periods
    }

    fn lifetime(&self) -> Lifetime {
        Lifetime {
            resource: Resource::new(Kind::PlainVm, &self.id),
            provisioned_at: self.provisioned_at,
            destroyed_at: self.destroyed_at,
        }
    }
}

/// Asserts that `result` is what `verdict` expects; the VM's view if it was accepted.
fn judged(verdict: &Verdict, result: Result<PlainVm, Error>, what: &str) -> Option<PlainVm> {
    match (verdict, result) {
        (Verdict::Accepted, Ok(view)) => Some(view),
        (Verdict::Conflict(words), Err(Error::Conflict(message))) => {
            assert!(message.contains(words.as_str()), "{what}: {message:?}");
            None
        }
        (Verdict::Invalid(words), Err(Error::Invalid(fields))) => {
            assert_eq!(fields.len(), 1, "{what}: {fields:?}");
            assert_eq!(fields[0].field, "to_account", "{what}: {fields:?}");
            assert!(fields[0].message.contains(words), "{what}: {fields:?}");
            None
        }
        (verdict, result) => panic!("{what}: the model expected {verdict:?}, got {result:?}"),
    }
}

/// Every period in the store, as the checker sees them.
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

/// 3 for Plain VMs, read off the lifetimes alone: every usage second is running (stopped
/// time bills like running time), and a VM's rows of a day add up to the whole seconds of that
/// day it existed, counted up to the rollup.
fn existence_billed(
    lifetimes: &[Lifetime],
    usage: &[Usage],
    rolled_up_at: Option<i64>,
    step: &str,
) {
    let mut billed: BTreeMap<(&Resource, Day), i64> = BTreeMap::new();
    for row in usage {
        assert_eq!(row.resource.kind, Kind::PlainVm, "{row}, {step}");
        assert_eq!(
            row.paused_s, 0,
            "a Plain VM's stopped time bills as running: {row}, {step}"
        );
        *billed.entry((&row.resource, row.day)).or_default() += row.running_s;
    }
    let mut existed: BTreeMap<(&Resource, Day), i64> = BTreeMap::new();
    // Without a rollup nothing is counted.
    let counted_to = rolled_up_at.unwrap_or(i64::MIN);
    for life in lifetimes {
        let end = life.destroyed_at.map_or(counted_to, |d| d.min(counted_to));
        let mut day = Day::of(life.provisioned_at);
        while day.start() < end {
            let seconds = checker::seconds_in_day(life.provisioned_at, end, day);
            if seconds != 0 {
                existed.insert((&life.resource, day), seconds);
            }
            day = day.next();
        }
    }
    assert_eq!(
        billed, existed,
        "each Plain VM's usage per UTC day, against the seconds it existed that day, {step}"
    );
}

/// What the whole run covered, so that it can fail if the generated cases miss a feature.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    steps_checked: usize,
    refusals: usize,
    transfers: usize,
    destroys: usize,
    stops: usize,
    /// Stopped spells of which the last rollup counted at least a second, and those seconds.
    stopped_spells_billed: usize,
    stopped_seconds_billed: i64,
    rollups: usize,
    cases_over_several_days: usize,
    /// VMs with usage on two UTC days or more.
    vms_billed_over_several_days: usize,
    most_days: i64,
}

impl Coverage {
    fn add(&mut self, case: &Self) {
        self.cases += case.cases;
        self.steps_checked += case.steps_checked;
        self.refusals += case.refusals;
        self.transfers += case.transfers;
        self.destroys += case.destroys;
        self.stops += case.stops;
        self.stopped_spells_billed += case.stopped_spells_billed;
        self.stopped_seconds_billed += case.stopped_seconds_billed;
        self.rollups += case.rollups;
        self.cases_over_several_days += case.cases_over_several_days;
        self.vms_billed_over_several_days += case.vms_billed_over_several_days;
        self.most_days = self.most_days.max(case.most_days);
    }
}

/// What one check read, in one snapshot.
struct Read {
    snapshot: Snapshot,
    rows: BTreeMap<String, PlainVmRow>,
    audit_events: BTreeMap<String, usize>,
}

struct World {
    app: App,
    clock: Arc<ManualClock>,
    accounts: Vec<String>,
    /// Each account's Vault key, which its VMs are given.
    keys: Vec<String>,
    vms: Vec<ModelVm>,
    caller: Caller,
    /// The instant of the last rollup, which today's usage rows count up to.
    rolled_up_at: Option<i64>,
    /// What the last check read, for survival.
    previous: Option<Snapshot>,
    coverage: Coverage,
}

impl World {
    async fn new(store: Store, start: Timestamp) -> Self {
        let clock = Arc::new(ManualClock::new(start));
        let local = Arc::new(LocalProvider::in_memory());
        let app = App::new(
            store,
            clock.clone(),
            Providers::new(control::providers::local::cloud(local)),
            Settings::default(),
        );
        let caller = Caller::new(
            Principal::Operator {
                token_id: "tok_property".to_owned(),
            },
            None,
        );
        let (mut accounts, mut keys) = (Vec::new(), Vec::new());
        for n in 0..ACCOUNTS {
            let request = control_api::accounts::CreateAccount {
                name: format!("account {n}"),
            };
            let account = control::accounts::create(&app, &request, None)
                .await
                .unwrap()
                .id;
            let key = AddVaultKey {
                name: "laptop".to_owned(),
                public_key: PUBLIC_KEY.to_owned(),
                account_id: Some(account.clone()),
            };
            keys.push(
                control::vault_keys::add(&app, &caller, &key, None)
                    .await
                    .unwrap()
                    .id,
            );
            accounts.push(account);
        }
        Self {
            app,
            clock,
            accounts,
            keys,
            vms: Vec::new(),
            caller,
            rolled_up_at: None,
            previous: None,
            coverage: Coverage {
                cases: 1,
                ..Coverage::default()
            },
        }
    }

    fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// The VM `n` names among those provisioned so far, if any.
    fn pick(&self, n: usize) -> Option<usize> {
        (!self.vms.is_empty()).then(|| n % self.vms.len())
    }

    async fn apply(&mut self, op: &Op) {
        let now = self.now();
        match *op {
            Op::Advance { ms } => self.clock.advance_ms(ms),
            Op::Midnight { offset_ms } => {
                let mut to = Day::of(now).end() + offset_ms;
                if to < now {
                    to += MILLIS_PER_DAY;
                }
                self.clock.advance_ms(to - now);
            }
            Op::Rollup => self.rollup_twice().await,
            Op::Provision { account } => self.provision(account, now).await,
            Op::Start { vm } => self.request(vm, AgentOperation::Start).await,
            Op::Stop { vm } => self.request(vm, AgentOperation::Stop).await,
            Op::Destroy { vm } => self.request(vm, AgentOperation::Destroy).await,
            Op::Transfer { vm, to } => self.transfer(vm, to, now).await,
            Op::RunJobs => self.run_jobs(now).await,
        }
    }

    async fn provision(&mut self, account: usize, now: i64) {
        let request = ProvisionPlainVm {
            name: format!("vm-{}", self.vms.len()),
            hostname: None,
            server_type: None,
            location: None,
            image: None,
            vault_key_ids: vec![self.keys[account].clone()],
            // A one-time password would change nothing here but cost a slow hash.
            one_time_password: false,
            account_id: Some(self.accounts[account].clone()),
        };
        let vm = plain_vms::provision(&self.app, &self.caller, &request, None)
            .await
            .unwrap();
        assert_eq!(vm.provisioned_at.as_millis(), now);
        assert_eq!(vm.state, PlainVmState::Stopped, "stopped until it runs");
        assert_eq!(vm.operation, Some(AgentOperation::Provision));
        self.vms.push(ModelVm {
            id: vm.id,
            account,
            state: PeriodState::Paused,
            pending: Some(AgentOperation::Provision),
            has_server: false,
            provisioned_at: now,
            destroyed_at: None,
            changes: vec![(now, account, PeriodState::Paused)],
            stopped: Vec::new(),
            audit_events: 0,
        });
    }

    /// A start, stop or destroy: accepted (and under way) or refused as the model says.
    async fn request(&mut self, vm: usize, operation: AgentOperation) {
        let Some(index) = self.pick(vm) else {
            return;
        };
        let model = &mut self.vms[index];
        let verdict = model.verdict(operation);
        let result = plain_vms::request(&self.app, &self.caller, &model.id, operation, None).await;
        let what = format!("{operation:?} on {model:?}");
        let Some(view) = judged(&verdict, result, &what) else {
            self.coverage.refusals += 1;
            return;
        };
        assert_eq!(view.operation, Some(operation), "{what}");
        model.pending = Some(operation);
        if operation == AgentOperation::Destroy {
            model.audit_events += 1; // destroy is an audit event; start and stop are not
        }
    }

    async fn transfer(&mut self, vm: usize, to: usize, now: i64) {
        let Some(index) = self.pick(vm) else {
            return;
        };
        let model = &mut self.vms[index];
        let verdict = if model.account == to {
            Verdict::Invalid("already belongs")
        } else if model.destroyed_at.is_some() {
            Verdict::Conflict("is destroyed".to_owned())
        } else {
            Verdict::Accepted
        };
        let request = TransferPlainVm {
            to_account: self.accounts[to].clone(),
        };
        let result = plain_vms::transfer(&self.app, &self.caller, &model.id, &request, None).await;
        let what = format!("transfer to account {to} of {model:?}");
        let Some(view) = judged(&verdict, result, &what) else {
            self.coverage.refusals += 1;
            return;
        };
        assert_eq!(view.account_id, self.accounts[to], "{what}");
        // An operation under way goes on; only the account billed changes, from now.
        assert_eq!(view.operation, model.pending, "{what}");
        model.account = to;
        let state = model.state;
        model.observe(now, state);
        model.audit_events += 1;
        self.coverage.transfers += 1;
    }

    /// Runs the due jobs: every operation under way is confirmed by the in-memory provider in
    /// this one pass, at this instant.
    async fn run_jobs(&mut self, now: i64) {
        let expected = self.vms.iter().filter(|m| m.pending.is_some()).count();
        assert_eq!(control::jobs::run_due(&self.app).await.unwrap(), expected);
        for model in &mut self.vms {
            let Some(operation) = model.pending.take() else {
                continue;
            };
            match operation {
                AgentOperation::Provision => {
                    model.has_server = true;
                    model.observe(now, PeriodState::Running);
                }
                AgentOperation::Start => {
                    model.end_stopped_spell(now);
                    model.observe(now, PeriodState::Running);
                }
                AgentOperation::Stop => {
                    model.observe(now, PeriodState::Paused);
                    model.stopped.push((now, None));
                    self.coverage.stops += 1;
                }
                AgentOperation::Destroy => {
                    model.end_stopped_spell(now);
                    model.destroyed_at = Some(now);
                    self.coverage.destroys += 1;
                }
            }
        }
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
        self.coverage.rollups += 1;
    }

    /// Reads the ledger and the VMs' rows in one snapshot, with the number of audit events of
    /// each resource.
    async fn read(&self) -> Read {
        let mut tx = self.app.store.read().await.unwrap();
        let rows: BTreeMap<String, PlainVmRow> = tx
            .plain_vms(None, None, true, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|row| (row.id.clone(), row))
            .collect();
        let lifetimes = rows
            .values()
            .map(|row| Lifetime {
                resource: Resource::new(Kind::PlainVm, &row.id),
                provisioned_at: row.provisioned_at,
                destroyed_at: row.destroyed_at,
            })
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
        Read {
            snapshot: Snapshot {
                lifetimes,
                periods,
                usage,
                transfers,
                rolled_up,
                settled: Some(self.now()),
            },
            rows,
            audit_events,
        }
    }

    /// The periods the model predicts for one VM, as the checker sees them.
    fn model_periods(&self, model: &ModelVm) -> Vec<Period> {
        model
            .periods()
            .into_iter()
            .map(|(account, state, started_at, ended_at)| Period {
                resource: Resource::new(Kind::PlainVm, &model.id),
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
        let read = self.read().await;
        let snapshot = &read.snapshot;
        checker::assert_none(&checker::check(snapshot, self.previous.as_ref()), step);

        // Each VM's row says what the model says: its account, state, operation under way and
        // lifetime (provisioned when accepted, destroyed when the provider confirmed it).
        assert_eq!(
            read.rows.keys().collect::<BTreeSet<_>>(),
            self.vms.iter().map(|m| &m.id).collect::<BTreeSet<_>>(),
            "the Plain VMs, {step}"
        );
        for model in &self.vms {
            let row = &read.rows[&model.id];
            let seen = (
                row.account_id.as_str(),
                row.state,
                row.operation,
                row.provisioned_at,
                row.destroyed_at,
            );
            let expected = (
                self.accounts[model.account].as_str(),
                model.state,
                model.pending,
                model.provisioned_at,
                model.destroyed_at,
            );
            assert_eq!(seen, expected, "the row of {}, {step}", model.id);
        }

        // 1. Tiling from provisioning to destruction, 2. every period on the account that
        // owned the VM then, a transfer splitting at its instant in the same state, 4. a
        // destroyed VM keeping its periods and its destroy and transfer events.
        let mut expected_periods = Vec::new();
        for model in &self.vms {
            let resource = Resource::new(Kind::PlainVm, &model.id);
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
            assert_eq!(
                read.audit_events.get(&model.id).copied().unwrap_or(0),
                model.audit_events,
                "audit events of {}, {step}",
                model.id
            );
            expected_periods.extend(expected);
        }
        assert_eq!(
            snapshot.periods.len(),
            expected_periods.len(),
            "periods of resources the model does not know, {step}"
        );
        self.check_usage(snapshot, &expected_periods, step);

        self.previous = Some(read.snapshot);
        self.coverage.steps_checked += 1;
    }

    /// Conservation (3) and attribution (2) of usage: the rows are what the model's periods
    /// are worth per day and account, counted up to the last rollup, and what the VMs'
    /// lifetimes are worth per day, all of it running.
    fn check_usage(&self, snapshot: &Snapshot, expected_periods: &[Period], step: &str) {
        assert_eq!(
            snapshot.rolled_up,
            self.rolled_up_at.map(RolledUp::at),
            "the rollup's instant, {step}"
        );
        let expected_usage = self
            .rolled_up_at
            .map(|at| checker::expected_usage(expected_periods, at))
            .unwrap_or_default();
        let mut usage = snapshot.usage.clone();
        usage.sort();
        assert_eq!(usage, expected_usage, "usage rows, {step}");
        let lifetimes: Vec<Lifetime> = self.vms.iter().map(ModelVm::lifetime).collect();
        existence_billed(&lifetimes, &usage, self.rolled_up_at, step);
    }

    /// The last checks of a case: a rollup (twice, 7) counts everything up to now, stopped
    /// spells included; an hour later another leaves the days before final (4, against the
    /// check before); the audit chain verifies.
    async fn finish(&mut self) {
        let rollups = self.coverage.rollups;
        self.rollup_twice().await;
        self.check("after the last rollup").await;
        let counted_to = self.now();
        for model in &self.vms {
            for &(from, to) in &model.stopped {
                let seconds = checker::seconds(from, to.unwrap_or(counted_to));
                self.coverage.stopped_seconds_billed += seconds;
                self.coverage.stopped_spells_billed += usize::from(seconds > 0);
            }
        }
        let usage = &self.previous.as_ref().unwrap().usage;
        let mut days: BTreeMap<&Resource, BTreeSet<Day>> = BTreeMap::new();
        for row in usage {
            days.entry(&row.resource).or_default().insert(row.day);
        }
        self.coverage.vms_billed_over_several_days = days.values().filter(|d| d.len() > 1).count();

        self.clock.advance_ms(3_600_000);
        self.rollup_twice().await;
        self.check("after a rollup an hour later").await;
        self.coverage.rollups = rollups;

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
        cases: proptest_cases(if backend == Backend::Sqlite { 48 } else { 24 }),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    // Start somewhere in a day, a few milliseconds off the second, to exercise the tick rule.
    // At least 8 steps: enough to provision, stop and bill a stopped VM.
    let scenario = (prop::collection::vec(op(), 8..64), 0..86_400_000_i64);
    let coverage = Mutex::new(Coverage::default());
    let began = Instant::now();
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
                world.finish().await;
                store.close().await;
                Coverage {
                    cases_over_several_days: usize::from(days > 1),
                    most_days: days,
                    ..world.coverage
                }
            });
            coverage.lock().unwrap().add(&case);
            Ok(())
        })
        .unwrap();
    let c = coverage.into_inner().unwrap();
    eprintln!(
        "plain_vm_ledger_props on {backend:?}: {} cases in {:.1} s, {} steps checked, {} requests \
         refused, {} transfers, {} destroys, {} stops, {} stopped spells billed ({} s), {} \
         rollups mid-way, {} cases over several UTC days (at most {} days), {} VMs billed on \
         several days",
        c.cases,
        began.elapsed().as_secs_f64(),
        c.steps_checked,
        c.refusals,
        c.transfers,
        c.destroys,
        c.stops,
        c.stopped_spells_billed,
        c.stopped_seconds_billed,
        c.rollups,
        c.cases_over_several_days,
        c.most_days,
        c.vms_billed_over_several_days
    );
    // Each is all but certain at the default number of cases (see the counts printed above).
    assert!(c.refusals > 0, "no case had a request refused: {c:?}");
    assert!(c.transfers > 0, "no case transferred a Plain VM: {c:?}");
    assert!(c.destroys > 0, "no case destroyed a Plain VM: {c:?}");
    assert!(
        c.stopped_spells_billed > 0,
        "no case billed a stopped Plain VM's time: {c:?}"
    );
    assert!(c.rollups > 0, "no case rolled up usage mid-way: {c:?}");
    assert!(
        c.cases_over_several_days > 0 && c.vms_billed_over_several_days > 0,
        "no case billed a Plain VM over several UTC days: {c:?}"
    );
}

#[test]
fn plain_vm_ledger_invariants_hold_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn plain_vm_ledger_invariants_hold_on_postgres() {
    run(Backend::Postgres);
}
