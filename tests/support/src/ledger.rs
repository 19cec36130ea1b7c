//! An independent checker of the ledger's invariants (DESIGN.md, "The ledger"), shared by the
//! property test that reads the database in-process (`control/tests/ledger_props.rs`) and the
//! system test that reads the HTTP API of real `control` processes (`tests/tests/system.rs`).
//!
//! It works on plain data of its own ([`Snapshot`]: lifetimes, periods, usage rows, transfers)
//! and does its own arithmetic, never calling `control::ledger`, so that a defect there cannot
//! hide itself from the check: the tick rule (an interval `[s, e)` in milliseconds is worth
//! `floor(e / 1000) - floor(s / 1000)` whole seconds) and UTC days (`[n * 86_400_000,
//! (n + 1) * 86_400_000)`) are computed here. The `time` crate only turns days into text.
//!
//! [`check`] returns every violation found, in words, of:
//! 1. **tiling**: each resource's periods cover `[provisioned_at, destroyed_at)` (or up to now)
//!    with no gap and no overlap, at most one open period, open exactly while it lives;
//! 2. **attribution**: each period and usage row has an account; accounts change only at a
//!    transfer, which splits the periods at its instant (from its source to its destination);
//!    each usage row holds what that account's periods are worth that day;
//! 3. **conservation**: per resource and UTC day, usage summed over accounts equals the seconds
//!    of that day inside the resource's lifetime, counted up to the rollup's instant;
//! 4. **survival**, given the snapshot before: no lifetime, period, transfer or final day's
//!    usage disappears or changes; an open period only ever gets closed.
//!
//! and [`same_rollup`] checks 7, **idempotence**: two rollups give the same rows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Milliseconds in a UTC day (no leap seconds in Unix time).
pub const MILLIS_PER_DAY: i64 = 86_400_000;

/// Whole seconds in `[start_ms, end_ms)` by the tick rule: the whole-second instants `k * 1000`
/// with `start_ms < k * 1000 <= end_ms`. Adjacent intervals add up to the interval they tile.
pub fn seconds(start_ms: i64, end_ms: i64) -> i64 {
    if end_ms <= start_ms {
        return 0;
    }
    end_ms.div_euclid(1000) - start_ms.div_euclid(1000)
}

/// Whole seconds of `[start_ms, end_ms)` that fall in `day`.
pub fn seconds_in_day(start_ms: i64, end_ms: i64, day: Day) -> i64 {
    seconds(start_ms.max(day.start()), end_ms.min(day.end()))
}

/// A UTC day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i64);

/// The Julian day number of 1970-01-01, to convert to and from `time::Date`.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

impl Day {
    /// The day the instant `ms` falls in.
    pub const fn of(ms: i64) -> Self {
        Self(ms.div_euclid(MILLIS_PER_DAY))
    }

    /// Its first millisecond.
    pub const fn start(self) -> i64 {
        self.0 * MILLIS_PER_DAY
    }

    /// The first millisecond of the next day.
    pub const fn end(self) -> i64 {
        (self.0 + 1) * MILLIS_PER_DAY
    }

    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(text, &format).ok()?;
        Some(Self(
            i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY,
        ))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = i32::try_from(self.0 + UNIX_EPOCH_JULIAN_DAY)
            .ok()
            .and_then(|julian| time::Date::from_julian_day(julian).ok());
        match date {
            Some(date) => write!(f, "{date}"),
            None => write!(f, "day {}", self.0),
        }
    }
}

/// An instant for messages: `2026-11-01T10:00:00.400Z (1793527200400 ms)`.
fn instant(ms: i64) -> String {
    let time = ms.rem_euclid(MILLIS_PER_DAY);
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        Day::of(ms),
        time / 3_600_000,
        time / 60_000 % 60,
        time / 1000 % 60,
        time % 1000
    )
}

/// Which kind of resource: Agents split their seconds into running and paused; Plain VMs bill
/// existence, so all their seconds are running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Agent,
    PlainVm,
}

impl Kind {
    /// The wire and database name: `agent`, `plain_vm`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "agent" => Some(Self::Agent),
            "plain_vm" => Some(Self::PlainVm),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::PlainVm => "plain_vm",
        }
    }
}

impl From<control_api::usage::ResourceKind> for Kind {
    fn from(kind: control_api::usage::ResourceKind) -> Self {
        match kind {
            control_api::usage::ResourceKind::Agent => Self::Agent,
            control_api::usage::ResourceKind::PlainVm => Self::PlainVm,
        }
    }
}

/// A period's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Running,
    Paused,
}

impl State {
    /// The wire and database name: `running`, `paused`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "running" => Some(Self::Running),
            "paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

impl From<control_api::agents::PeriodState> for State {
    fn from(state: control_api::agents::PeriodState) -> Self {
        match state {
            control_api::agents::PeriodState::Running => Self::Running,
            control_api::agents::PeriodState::Paused => Self::Paused,
        }
    }
}

/// A resource: kind and id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    pub kind: Kind,
    pub id: String,
}

impl Resource {
    pub fn new(kind: Kind, id: &str) -> Self {
        Self {
            kind,
            id: id.to_owned(),
        }
    }

    pub fn agent(id: &str) -> Self {
        Self::new(Kind::Agent, id)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.id)
    }
}

/// When a resource was provisioned and, once it is, destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub resource: Resource,
    pub provisioned_at: i64,
    pub destroyed_at: Option<i64>,
}

/// A state period `[started_at, ended_at)` of one resource on one account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Period {
    pub resource: Resource,
    pub account: String,
    pub state: State,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.ended_at.map_or_else(|| "open".to_owned(), instant);
        write!(
            f,
            "{}'s {:?} period [{}, {end}) on {:?}",
            self.resource,
            self.state,
            instant(self.started_at),
            self.account
        )
    }
}

/// One daily usage row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Usage {
    pub day: Day,
    pub resource: Resource,
    pub account: String,
    pub running_s: i64,
    pub paused_s: i64,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on {:?}: running {} s, paused {} s",
            self.day, self.resource, self.account, self.running_s, self.paused_s
        )
    }
}

/// A transfer between accounts at an instant, as its audit event records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub resource: Resource,
    pub at: i64,
    pub from: String,
    pub to: String,
}

/// How far the rollup that wrote a snapshot's usage rows had counted: the rows count up to an
/// instant known to lie in `[earliest, latest]`. Read in-process the two are the rollup's own
/// instant; read over HTTP while rollups keep running, a window around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolledUp {
    pub earliest: i64,
    pub latest: i64,
}

impl RolledUp {
    pub const fn at(ms: i64) -> Self {
        Self {
            earliest: ms,
            latest: ms,
        }
    }

    /// Days before this one are final: counted whole, never counted again differently.
    const fn first_open_day(self) -> Day {
        Day::of(self.earliest)
    }
}

/// What a test read of the ledger at one moment: every resource's lifetime and periods, the
/// transfers, and the usage rows of every day.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub lifetimes: Vec<Lifetime>,
    pub periods: Vec<Period>,
    pub usage: Vec<Usage>,
    pub transfers: Vec<Transfer>,
    /// `None` when no rollup has run: then there must be no usage rows.
    pub rolled_up: Option<RolledUp>,
    /// An instant no later change can come before (the clock of an in-process test), if known:
    /// what the periods say before it is settled. `None` for a live system read over HTTP.
    pub settled: Option<i64>,
}

/// Every violation of invariants 1 to 4 in `current` (and, with `previous`, between the two),
/// in words; empty when the ledger is sound.
pub fn check(current: &Snapshot, previous: Option<&Snapshot>) -> Vec<String> {
    let mut out = Vec::new();
    let lifetimes = lifetimes_of(current, &mut out);
    let periods = periods_by_resource(&current.periods);
    tiling(&lifetimes, &periods, &mut out);
    attribution(current, &lifetimes, &periods, &mut out);
    conservation(current, &lifetimes, &mut out);
    if let Some(previous) = previous {
        survival(previous, current, &mut out);
    }
    out
}

/// Invariant 7: the rows of two rollups over the same periods at the same instant are the same.
pub fn same_rollup(first: &[Usage], second: &[Usage]) -> Vec<String> {
    let first: BTreeSet<&Usage> = first.iter().collect();
    let second: BTreeSet<&Usage> = second.iter().collect();
    let mut out: Vec<String> = first
        .difference(&second)
        .map(|row| format!("idempotence: the second rollup lost the row {row}"))
        .collect();
    out.extend(
        second
            .difference(&first)
            .map(|row| format!("idempotence: the second rollup made the row {row}")),
    );
    out
}

/// Panics with every violation, one a line, if there is any.
pub fn assert_none(violations: &[String], context: &str) {
    assert!(
        violations.is_empty(),
        "ledger invariants broken ({context}):\n  {}",
        violations.join("\n  ")
    );
}

/// The usage rows a rollup that counted up to `counted_to` must have written for `periods`: per
/// UTC day, resource and account, the seconds of its running and of its paused periods (a Plain
/// VM's are all running). Rows worth nothing are left out; ordered by day, resource, account.
pub fn expected_usage(periods: &[Period], counted_to: i64) -> Vec<Usage> {
    usage_totals(periods, counted_to)
        .into_iter()
        .filter(|(_, (running_s, paused_s))| *running_s != 0 || *paused_s != 0)
        .map(|((day, resource, account), (running_s, paused_s))| Usage {
            day,
            resource: resource.clone(),
            account: account.to_owned(),
            running_s,
            paused_s,
        })
        .collect()
}

type UsageKey<'a> = (Day, &'a Resource, &'a str);

fn usage_totals(periods: &[Period], counted_to: i64) -> BTreeMap<UsageKey<'_>, (i64, i64)> {
    let mut totals: BTreeMap<UsageKey<'_>, (i64, i64)> = BTreeMap::new();
    for period in periods {
        let start = period.started_at;
        let end = period.ended_at.unwrap_or(counted_to).min(counted_to);
        if end <= start {
            continue;
        }
        let mut day = Day::of(start);
        while day.start() < end {
            let secs = seconds_in_day(start, end, day);
            let entry = totals
                .entry((day, &period.resource, period.account.as_str()))
                .or_default();
            if period.resource.kind == Kind::PlainVm || period.state == State::Running {
                entry.0 += secs;
            } else {
                entry.1 += secs;
            }
            day = day.next();
        }
    }
    totals
}

fn lifetimes_of<'a>(
    snapshot: &'a Snapshot,
    out: &mut Vec<String>,
) -> BTreeMap<&'a Resource, &'a Lifetime> {
    let mut lifetimes = BTreeMap::new();
    for life in &snapshot.lifetimes {
        if lifetimes.insert(&life.resource, life).is_some() {
            out.push(format!("{} has two lifetimes", life.resource));
        }
        if let Some(destroyed) = life.destroyed_at
            && destroyed < life.provisioned_at
        {
            out.push(format!(
                "{} is destroyed at {} before its provisioning at {}",
                life.resource,
                instant(destroyed),
                instant(life.provisioned_at)
            ));
        }
    }
    lifetimes
}

/// Each resource's periods, oldest first (an open period after a closed one starting with it).
fn periods_by_resource(periods: &[Period]) -> BTreeMap<&Resource, Vec<&Period>> {
    let mut by: BTreeMap<&Resource, Vec<&Period>> = BTreeMap::new();
    for period in periods {
        by.entry(&period.resource).or_default().push(period);
    }
    for list in by.values_mut() {
        list.sort_by_key(|p| (p.started_at, p.ended_at.unwrap_or(i64::MAX)));
    }
    by
}

/// Invariant 1.
fn tiling(
    lifetimes: &BTreeMap<&Resource, &Lifetime>,
    periods: &BTreeMap<&Resource, Vec<&Period>>,
    out: &mut Vec<String>,
) {
    for resource in periods.keys().filter(|r| !lifetimes.contains_key(*r)) {
        out.push(format!(
            "tiling: {resource} has periods but no lifetime (an unknown resource)"
        ));
    }
    for (resource, life) in lifetimes {
        let Some(ordered) = periods.get(resource).filter(|l| !l.is_empty()) else {
            out.push(format!("tiling: {resource} has no state period at all"));
            continue;
        };
        let (first, last) = (ordered[0], ordered[ordered.len() - 1]);
        if first.started_at > life.provisioned_at {
            out.push(format!(
                "tiling: gap: {resource} has no period in [{}, {}) after its provisioning",
                instant(life.provisioned_at),
                instant(first.started_at)
            ));
        } else if first.started_at < life.provisioned_at {
            out.push(format!(
                "tiling: overlap: {first} starts before its provisioning at {}",
                instant(life.provisioned_at)
            ));
        }
        for period in ordered {
            if period.ended_at.is_some_and(|end| end < period.started_at) {
                out.push(format!("tiling: overlap: {period} ends before it starts"));
            }
        }
        for pair in ordered.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            match before.ended_at {
                None => out.push(format!(
                    "tiling: overlap: {before} is still open, yet {after} follows it"
                )),
                Some(end) if end < after.started_at => out.push(format!(
                    "tiling: gap: {resource} has no period in [{}, {})",
                    instant(end),
                    instant(after.started_at)
                )),
                Some(end) if end > after.started_at => out.push(format!(
                    "tiling: overlap: {before} and {after} overlap in [{}, {})",
                    instant(after.started_at),
                    instant(end)
                )),
                Some(_) => {}
            }
        }
        let open = ordered.iter().filter(|p| p.ended_at.is_none()).count();
        if open > 1 {
            out.push(format!(
                "tiling: {resource} has {open} open periods; at most one may be open"
            ));
        }
        match (life.destroyed_at, last.ended_at) {
            (None, Some(end)) => out.push(format!(
                "tiling: gap: {resource} lives, but its last period ended at {}",
                instant(end)
            )),
            (Some(destroyed), None) => out.push(format!(
                "tiling: {resource} was destroyed at {}, but {last} is still open",
                instant(destroyed)
            )),
            (Some(destroyed), Some(end)) if end < destroyed => out.push(format!(
                "tiling: gap: {resource} has no period in [{}, {}) before its destruction",
                instant(end),
                instant(destroyed)
            )),
            (Some(destroyed), Some(end)) if end > destroyed => out.push(format!(
                "tiling: overlap: {last} runs past the destruction at {}",
                instant(destroyed)
            )),
            _ => {}
        }
    }
}

/// Invariant 2, from what the periods, transfers and rows say.
fn attribution(
    snapshot: &Snapshot,
    lifetimes: &BTreeMap<&Resource, &Lifetime>,
    periods: &BTreeMap<&Resource, Vec<&Period>>,
    out: &mut Vec<String>,
) {
    for period in snapshot.periods.iter().filter(|p| p.account.is_empty()) {
        out.push(format!("attribution: {period} belongs to no account"));
    }
    for row in snapshot.usage.iter().filter(|r| r.account.is_empty()) {
        out.push(format!(
            "attribution: the usage row {row} belongs to no account"
        ));
    }
    // The transfers of each resource at each instant, in the order they happened.
    let mut transfers: BTreeMap<(&Resource, i64), Vec<&Transfer>> = BTreeMap::new();
    for transfer in &snapshot.transfers {
        transfers
            .entry((&transfer.resource, transfer.at))
            .or_default()
            .push(transfer);
    }
    for ((resource, at), chain) in &transfers {
        let at = *at;
        let (first, last) = (chain[0], chain[chain.len() - 1]);
        for pair in chain.windows(2) {
            if pair[0].to != pair[1].from {
                out.push(format!(
                    "attribution: {resource}'s transfers at {} do not chain: to {:?}, then from {:?}",
                    instant(at),
                    pair[0].to,
                    pair[1].from
                ));
            }
        }
        let ordered = periods.get(resource).map_or(&[][..], Vec::as_slice);
        let provisioned = lifetimes.get(resource).map(|l| l.provisioned_at);
        if provisioned.is_none_or(|p| at < p) {
            out.push(format!(
                "attribution: {resource} is transferred at {} outside its lifetime",
                instant(at)
            ));
            continue;
        }
        // From `at` on, the period in force is the last destination's; just before `at` (unless
        // that is before the resource existed), the first source's.
        let from_at = ordered.iter().rev().find(|p| p.started_at <= at).copied();
        expect_account(out, resource, at, from_at, ("to", &last.to), "then");
        if provisioned.is_some_and(|p| at > p) {
            let before_at = ordered.iter().rev().find(|p| p.started_at < at).copied();
            expect_account(
                out,
                resource,
                at,
                before_at,
                ("from", &first.from),
                "just before",
            );
        }
    }
    for (resource, list) in periods {
        for pair in list.windows(2) {
            let (before, after) = (pair[0], pair[1]);
            if before.account != after.account
                && !transfers.contains_key(&(*resource, after.started_at))
            {
                out.push(format!(
                    "attribution: {resource} moves from {:?} to {:?} at {} without a transfer",
                    before.account,
                    after.account,
                    instant(after.started_at)
                ));
            }
        }
    }
}

/// That `period`, in force around the transfer of `resource` at `at`, is on the account the
/// transfer names (`side`: "to" its destination or "from" its source).
fn expect_account(
    out: &mut Vec<String>,
    resource: &Resource,
    at: i64,
    period: Option<&Period>,
    (side, account): (&str, &str),
    when: &str,
) {
    match period {
        Some(period) if period.account == account => {}
        Some(period) => out.push(format!(
            "attribution: {resource} is transferred {side} {account:?} at {}, but {period} is in force {when}",
            instant(at)
        )),
        None => out.push(format!(
            "attribution: {resource} is transferred at {}, with no period in force {when}",
            instant(at)
        )),
    }
}

/// Invariant 3, and the usage half of 2: every row holds what its account's periods are worth
/// that day, and the rows of a resource and day add up to its lifetime's seconds that day.
fn conservation(
    snapshot: &Snapshot,
    lifetimes: &BTreeMap<&Resource, &Lifetime>,
    out: &mut Vec<String>,
) {
    let Some(rolled) = snapshot.rolled_up else {
        if let Some(row) = snapshot.usage.first() {
            out.push(format!(
                "conservation: no rollup has run, yet there is the usage row {row}"
            ));
        }
        return;
    };
    if rolled.earliest > rolled.latest {
        out.push(format!(
            "conservation: the rollup window [{}, {}] is empty",
            instant(rolled.earliest),
            instant(rolled.latest)
        ));
        return;
    }
    let last_day = Day::of(rolled.latest);
    let mut rows: BTreeMap<UsageKey<'_>, (i64, i64)> = BTreeMap::new();
    for row in &snapshot.usage {
        let key = (row.day, &row.resource, row.account.as_str());
        if rows.insert(key, (row.running_s, row.paused_s)).is_some() {
            out.push(format!("conservation: two usage rows for {row}"));
        }
        if row.running_s < 0 || row.paused_s < 0 {
            out.push(format!("conservation: negative seconds in {row}"));
        }
        if row.day > last_day {
            out.push(format!(
                "conservation: the row {row} is for a day after the rollup's, {last_day}"
            ));
        }
        if !lifetimes.contains_key(&row.resource) {
            out.push(format!(
                "conservation: the row {row} is for an unknown resource"
            ));
        }
    }
    // Each row against the periods of its account: what they are worth counted up to the
    // earliest and to the latest instant the rollup may have counted to.
    let low = usage_totals(&snapshot.periods, rolled.earliest);
    let high = usage_totals(&snapshot.periods, rolled.latest);
    let keys: BTreeSet<UsageKey<'_>> = rows.keys().chain(high.keys()).copied().collect();
    for key in keys {
        let (day, resource, account) = key;
        let (running, paused) = rows.get(&key).copied().unwrap_or_default();
        let (low_running, low_paused) = low.get(&key).copied().unwrap_or_default();
        let (high_running, high_paused) = high.get(&key).copied().unwrap_or_default();
        if !(low_running..=high_running).contains(&running)
            || !(low_paused..=high_paused).contains(&paused)
        {
            out.push(format!(
                "attribution: {day} {resource} on {account:?}: the usage says running {running} s, \
                 paused {paused} s; its periods make it running {}, paused {}",
                range(low_running, high_running),
                range(low_paused, high_paused)
            ));
        }
    }
    // Each resource and day: the rows over accounts against the lifetime alone.
    let mut summed: BTreeMap<(&Resource, Day), i64> = BTreeMap::new();
    for ((day, resource, _), (running, paused)) in &rows {
        *summed.entry((*resource, *day)).or_default() += running + paused;
    }
    for (resource, life) in lifetimes {
        let mut day = Day::of(life.provisioned_at);
        let end_day = life
            .destroyed_at
            .map_or(last_day, |d| Day::of(d).min(last_day));
        while day <= end_day {
            summed.entry((*resource, day)).or_default();
            day = day.next();
        }
    }
    for ((resource, day), total) in summed {
        let (low, high) = lifetimes.get(resource).map_or((0, 0), |life| {
            let lived = |to: i64| {
                let end = life.destroyed_at.map_or(to, |d| d.min(to));
                seconds_in_day(life.provisioned_at, end, day)
            };
            (lived(rolled.earliest), lived(rolled.latest))
        });
        if !(low..=high).contains(&total) {
            out.push(format!(
                "conservation: {day} {resource}: the usage rows add up to {total} s, but it lived {} \
                 of that day up to the rollup",
                range(low, high)
            ));
        }
    }
}

fn range(low: i64, high: i64) -> String {
    if low == high {
        format!("{low} s")
    } else {
        format!("{low}..={high} s")
    }
}

/// Invariant 4: nothing recorded before disappears or changes; an open period may only close.
fn survival(previous: &Snapshot, current: &Snapshot, out: &mut Vec<String>) {
    let now: BTreeMap<&Resource, &Lifetime> =
        current.lifetimes.iter().map(|l| (&l.resource, l)).collect();
    for before in &previous.lifetimes {
        match now.get(&before.resource) {
            None => out.push(format!("survival: {} vanished", before.resource)),
            Some(after) if after.provisioned_at != before.provisioned_at => out.push(format!(
                "survival: {}'s provisioning moved from {} to {}",
                before.resource,
                instant(before.provisioned_at),
                instant(after.provisioned_at)
            )),
            Some(after) => {
                if let Some(destroyed) = before.destroyed_at
                    && after.destroyed_at != Some(destroyed)
                {
                    out.push(format!(
                        "survival: {}'s destruction at {} became {:?}",
                        before.resource,
                        instant(destroyed),
                        after.destroyed_at.map(instant)
                    ));
                }
            }
        }
    }
    for period in &previous.periods {
        let same_start = current
            .periods
            .iter()
            .find(|p| p.resource == period.resource && p.started_at == period.started_at);
        let Some(found) = same_start else {
            out.push(format!("survival: {period} vanished"));
            continue;
        };
        if period.ended_at.is_some() {
            if found != period {
                out.push(format!("survival: {period} became {found}"));
            }
            continue;
        }
        // Open then: what it said up to the instant history was settled stays so.
        if let Some(settled) = previous.settled.filter(|s| *s > period.started_at) {
            if (&found.account, found.state) != (&period.account, period.state) {
                out.push(format!(
                    "survival: {period}, already {} ms old, became {found}",
                    settled - period.started_at
                ));
            }
            if found.ended_at.is_some_and(|end| end < settled) {
                out.push(format!(
                    "survival: {period}, open at {}, became {found}",
                    instant(settled)
                ));
            }
        }
    }
    for transfer in &previous.transfers {
        if !current.transfers.contains(transfer) {
            out.push(format!(
                "survival: the transfer of {} at {} from {:?} to {:?} vanished",
                transfer.resource,
                instant(transfer.at),
                transfer.from,
                transfer.to
            ));
        }
    }
    // The rows of days that were final then, whole.
    if let Some(rolled) = previous.rolled_up {
        let final_rows = |rows: &[Usage]| -> BTreeSet<Usage> {
            rows.iter()
                .filter(|r| r.day < rolled.first_open_day())
                .cloned()
                .collect()
        };
        let (before, after) = (final_rows(&previous.usage), final_rows(&current.usage));
        for row in before.difference(&after) {
            out.push(format!(
                "survival: the usage row {row} of a final day vanished or changed"
            ));
        }
        for row in after.difference(&before) {
            out.push(format!("survival: a final day gained the usage row {row}"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }

    fn period(
        resource: &Resource,
        account: &str,
        state: State,
        start: i64,
        end: Option<i64>,
    ) -> Period {
        Period {
            resource: resource.clone(),
            account: account.to_owned(),
            state,
            started_at: start,
            ended_at: end,
        }
    }

    fn row(day: Day, resource: &Resource, account: &str, running_s: i64, paused_s: i64) -> Usage {
        Usage {
            day,
            resource: resource.clone(),
            account: account.to_owned(),
            running_s,
            paused_s,
        }
    }

    /// An Agent paused, then running, transferred mid-day, running across midnight, paused and
    /// destroyed the next day; a Plain VM running then stopped (billed the same), still alive;
    /// rolled up at noon of the second day. The rows are worked out by hand.
    fn history() -> Snapshot {
        let (d0, d1) = (day("2026-11-01"), day("2026-11-02"));
        let (a, p) = (
            Resource::agent("agt_a"),
            Resource::new(Kind::PlainVm, "pvm_b"),
        );
        let (s0, s1) = (d0.start(), d1.start());
        Snapshot {
            lifetimes: vec![
                Lifetime {
                    resource: a.clone(),
                    provisioned_at: s0 + 36_000_400,
                    destroyed_at: Some(s1 + 10_800_000),
                },
                Lifetime {
                    resource: p.clone(),
                    provisioned_at: s1 + 3_600_000,
                    destroyed_at: None,
                },
            ],
            periods: vec![
                // 10:00:00.400 .. 10:05: 300 s (the tick at 10:00:00 is before it).
                period(
                    &a,
                    "acc_1",
                    State::Paused,
                    s0 + 36_000_400,
                    Some(s0 + 36_300_000),
                ),
                // 10:05 .. 20:00:00.700: 35_700 s.
                period(
                    &a,
                    "acc_1",
                    State::Running,
                    s0 + 36_300_000,
                    Some(s0 + 72_000_700),
                ),
                // 20:00:00.700 .. midnight: 14_400 s; .. 02:00: 7_200 s.
                period(
                    &a,
                    "acc_2",
                    State::Running,
                    s0 + 72_000_700,
                    Some(s1 + 7_200_000),
                ),
                // 02:00 .. 03:00: 3_600 s.
                period(
                    &a,
                    "acc_2",
                    State::Paused,
                    s1 + 7_200_000,
                    Some(s1 + 10_800_000),
                ),
                // 01:00 .. 01:30, then stopped up to the rollup at 12:00:00.999: 39_600 s.
                period(
                    &p,
                    "acc_1",
                    State::Running,
                    s1 + 3_600_000,
                    Some(s1 + 5_400_000),
                ),
                period(&p, "acc_1", State::Paused, s1 + 5_400_000, None),
            ],
            usage: vec![
                row(d0, &a, "acc_1", 35_700, 300),
                row(d0, &a, "acc_2", 14_400, 0),
                row(d1, &a, "acc_2", 7_200, 3_600),
                row(d1, &p, "acc_1", 39_600, 0),
            ],
            transfers: vec![Transfer {
                resource: a,
                at: s0 + 72_000_700,
                from: "acc_1".to_owned(),
                to: "acc_2".to_owned(),
            }],
            rolled_up: Some(RolledUp::at(s1 + 43_200_999)),
            settled: Some(s1 + 43_200_999),
        }
    }

    /// Panics unless the history, changed by `change`, breaks an invariant in words that
    /// mention `word`; checked alone, or (`after_history`) against the unchanged history.
    fn caught(change: impl FnOnce(&mut Snapshot), word: &str, after_history: bool) {
        let before = history();
        let mut broken = history();
        change(&mut broken);
        let all = check(&broken, after_history.then_some(&before));
        assert!(
            all.iter().any(|v| v.contains(word)),
            "expected a violation mentioning `{word}`, got {all:#?}"
        );
    }

    #[test]
    fn the_tick_rule_and_utc_days() {
        assert_eq!(seconds(10_400, 12_600), 2);
        assert_eq!(seconds(12_600, 15_000), 3);
        assert_eq!(seconds(10_400, 15_000), 5);
        assert_eq!(seconds(10_400, 10_900), 0);
        assert_eq!(seconds(-1_500, 500), 2);
        assert_eq!(seconds(5_000, 4_000), 0);
        assert_eq!(day("1970-01-02"), Day(1));
        assert_eq!(Day::of(-1), Day(-1));
        assert_eq!(Day(-1).to_string(), "1969-12-31");
        let d = day("2026-11-01");
        assert_eq!(d.to_string(), "2026-11-01");
        assert_eq!(instant(d.start() + 72_000_700), "2026-11-01T20:00:00.700Z");
        // Across midnight, the two days' seconds add up to the whole.
        let (s, e) = (d.end() - 1_500, d.end() + 2_500);
        assert_eq!(seconds_in_day(s, e, d), 2);
        assert_eq!(seconds_in_day(s, e, d.next()), 2);
        assert_eq!(seconds(s, e), 4);
    }

    #[test]
    fn a_sound_history_passes_and_its_rows_are_what_the_periods_make() {
        let history = history();
        assert_none(&check(&history, None), "the worked example");
        assert_none(&check(&history, Some(&history)), "against itself");
        let mut rows = history.usage.clone();
        rows.sort();
        assert_eq!(
            expected_usage(&history.periods, history.rolled_up.unwrap().latest),
            rows
        );
        assert!(same_rollup(&rows, &history.usage).is_empty());
    }

    #[test]
    fn a_gap_is_caught() {
        caught(
            |h| h.periods[1].ended_at = Some(h.periods[1].started_at + 100),
            "tiling: gap",
            false,
        );
        caught(
            |h| h.periods[0].started_at += 1_000,
            "after its provisioning",
            false,
        );
        caught(
            |h| h.lifetimes[0].destroyed_at = h.lifetimes[0].destroyed_at.map(|d| d + 1),
            "before its destruction",
            false,
        );
    }

    #[test]
    fn an_overlap_is_caught() {
        caught(
            |h| h.periods[1].ended_at = h.periods[1].ended_at.map(|e| e + 1),
            "tiling: overlap",
            false,
        );
        caught(
            |h| h.periods[3].ended_at = h.periods[3].ended_at.map(|e| e + 1),
            "runs past the destruction",
            false,
        );
    }

    #[test]
    fn two_open_periods_are_caught() {
        caught(|h| h.periods[4].ended_at = None, "2 open periods", false);
        caught(|h| h.periods[3].ended_at = None, "is still open", false);
        caught(
            |h| h.periods[5].ended_at = Some(h.periods[5].started_at + 1),
            "lives, but its last period ended",
            false,
        );
    }

    #[test]
    fn a_conservation_error_is_caught() {
        caught(
            |h| h.usage[2].paused_s -= 1,
            "conservation: 2026-11-02 agent agt_a",
            false,
        );
        // Rows that agree with the periods, but the periods do not cover the lifetime.
        caught(
            |h| h.lifetimes[1].provisioned_at -= 60_000,
            "conservation: 2026-11-02 plain_vm pvm_b",
            false,
        );
        // A day with no row at all.
        caught(
            |h| drop(h.usage.drain(..2)),
            "conservation: 2026-11-01 agent agt_a",
            false,
        );
        // Rows without a rollup, rows past the rollup's day.
        caught(|h| h.rolled_up = None, "no rollup has run", false);
        caught(
            |h| h.usage[3].day = h.usage[3].day.next(),
            "after the rollup's",
            false,
        );
    }

    #[test]
    fn a_rollup_window_accepts_any_instant_within_it_and_nothing_beyond() {
        let mut live = history();
        let noon = live.rolled_up.unwrap().latest;
        live.rolled_up = Some(RolledUp {
            earliest: noon - 5_000,
            latest: noon + 5_000,
        });
        live.settled = None;
        assert_none(&check(&live, None), "rows inside the window");
        live.usage[3].running_s += 5;
        assert_none(&check(&live, None), "rows at the window's end");
        live.usage[3].running_s += 1;
        let all = check(&live, None);
        assert!(
            all.iter().any(|v| v.contains("39595..=39605 s")),
            "{all:#?}"
        );
    }

    #[test]
    fn misattribution_is_caught() {
        caught(
            |h| h.usage[1].account = "acc_3".to_owned(),
            "attribution: 2026-11-01 agent agt_a on \"acc_3\"",
            false,
        );
        caught(
            |h| h.transfers[0].to = "acc_3".to_owned(),
            "is transferred to \"acc_3\"",
            false,
        );
        caught(
            |h| h.transfers[0].from = "acc_3".to_owned(),
            "is transferred from \"acc_3\"",
            false,
        );
        caught(|h| h.transfers.clear(), "without a transfer", false);
        caught(
            |h| h.periods[0].account = String::new(),
            "belongs to no account",
            false,
        );
    }

    #[test]
    fn a_vanished_period_is_caught() {
        caught(
            |h| drop(h.periods.remove(0)),
            "survival: agent agt_a's Paused period",
            true,
        );
        // A closed period changed, a settled open one relabelled, a resource or transfer gone.
        caught(
            |h| h.periods[2].account = "acc_3".to_owned(),
            "became",
            true,
        );
        caught(
            |h| h.periods[5].state = State::Running,
            "ms old, became",
            true,
        );
        caught(
            |h| drop(h.lifetimes.remove(1)),
            "survival: plain_vm pvm_b vanished",
            true,
        );
        caught(|h| h.transfers.clear(), "the transfer of agent agt_a", true);
    }

    #[test]
    fn a_final_days_rows_never_change() {
        caught(
            |h| drop(h.usage.remove(1)),
            "survival: the usage row 2026-11-01",
            true,
        );
        // Today's rows may be counted again; a period still open may close.
        let before = history();
        let later = before.settled.unwrap() + 60_000;
        let mut after = history();
        after.usage[3].running_s += 60;
        after.periods[5].ended_at = Some(later);
        after.lifetimes[1].destroyed_at = Some(later);
        after.rolled_up = Some(RolledUp::at(later));
        assert_none(&check(&after, Some(&before)), "a later rollup");
    }

    #[test]
    fn a_second_rollup_that_differs_is_caught() {
        let first = history().usage;
        let mut second = first.clone();
        second[0].running_s += 1;
        let violations = same_rollup(&first, &second);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("lost the row 2026-11-01 agent agt_a"));
    }
}
