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

mod invariants;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use invariants::check;

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

/// An instant for messages: `2026-11-01T10:00:00.400Z`.
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
