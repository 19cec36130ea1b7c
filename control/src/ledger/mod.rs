//! The ledger: state periods and the daily usage rolled up from them.
//!
//! Every function here takes a [`ResourceRef`]: Agents and Plain VMs share one ledger.
//!
//! Invariants kept here (DESIGN.md, "The ledger"): a resource's periods tile
//! `[provisioned_at, destroyed_at)` with at most one open period (1); every period and usage row
//! belongs to exactly one account, and a transfer splits the open period at its instant (2);
//! per resource and UTC day the usage seconds over accounts equal the seconds of that day in
//! the resource's lifetime (3); nothing here ever deletes a period (4); rolling up twice gives
//! the same rows (7).
//!
//! Seconds are counted on the tick rule: an interval `[s, e)` in milliseconds is worth
//! `floor(e / 1000) - floor(s / 1000)` seconds. Adjacent intervals then add up exactly to the
//! interval they tile, so conservation holds in whole seconds however periods are split.

pub mod report;

use std::collections::BTreeMap;

use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;
use control_api::{Day, Timestamp};

use crate::ids::{new_id, prefix};
pub use crate::store::ResourceRef;
use crate::store::{PeriodRow, Result, Store, StoreError, Tx, UsageRowRecord};

/// Whole seconds in `[start_ms, end_ms)` by the tick rule.
pub fn seconds(start_ms: i64, end_ms: i64) -> i64 {
    if end_ms <= start_ms {
        return 0;
    }
    end_ms.div_euclid(1000) - start_ms.div_euclid(1000)
}

/// Opens a resource's first period at its provisioning instant.
pub async fn open(
    tx: &mut Tx,
    resource: ResourceRef<'_>,
    account_id: &str,
    state: PeriodState,
    at: Timestamp,
) -> Result<()> {
    insert_open(tx, resource, account_id, state, at.as_millis()).await
}

async fn insert_open(
    tx: &mut Tx,
    resource: ResourceRef<'_>,
    account_id: &str,
    state: PeriodState,
    at: i64,
) -> Result<()> {
    tx.insert_period(&PeriodRow {
        id: new_id(prefix::PERIOD),
        resource_kind: resource.kind,
        resource_id: resource.id.to_owned(),
        account_id: account_id.to_owned(),
        state,
        started_at: at,
        ended_at: None,
    })
    .await
}

/// Records that from `at` on the resource is in `state` on `account_id`: closes the open period
/// and opens the next. Does nothing if that is already so. Returns the instant used. The caller
/// holds the resource's row lock.
///
/// `at` never moves before the open period's start (a replica whose clock lags cannot rewrite
/// history); a change at the very instant the open period started relabels that still-empty
/// period instead of leaving a zero-length one behind.
pub async fn switch(
    tx: &mut Tx,
    resource: ResourceRef<'_>,
    account_id: &str,
    state: PeriodState,
    at: Timestamp,
) -> Result<Timestamp> {
    let open = open_period(tx, resource).await?;
    let at = at.as_millis().max(open.started_at);
    if open.account_id == account_id && open.state == state {
        return Ok(Timestamp::from_millis(at));
    }
    if at == open.started_at {
        tx.relabel_open_period(&open.id, account_id, state).await?;
    } else {
        tx.close_period(&open.id, at).await?;
        insert_open(tx, resource, account_id, state, at).await?;
    }
    Ok(Timestamp::from_millis(at))
}

/// Ends the resource's lifetime at `at` (or at its open period's start, if that is later) and
/// returns the instant used.
pub async fn close(tx: &mut Tx, resource: ResourceRef<'_>, at: Timestamp) -> Result<Timestamp> {
    let open = open_period(tx, resource).await?;
    let at = at.as_millis().max(open.started_at);
    tx.close_period(&open.id, at).await?;
    Ok(Timestamp::from_millis(at))
}

/// Records a transfer of the resource to `to` at `at`: its open period ends and `to`'s begins
/// in the same state. Returns the instant the ledger split at (later than `at` only if this
/// replica's clock lags the one that opened the period) and that state. The caller holds the
/// resource's row lock and has moved the row.
pub async fn transfer(
    tx: &mut Tx,
    resource: ResourceRef<'_>,
    to: &str,
    at: Timestamp,
) -> Result<(Timestamp, PeriodState)> {
    let state = open_period(tx, resource).await?.state;
    Ok((switch(tx, resource, to, state, at).await?, state))
}

async fn open_period(tx: &mut Tx, resource: ResourceRef<'_>) -> Result<PeriodRow> {
    tx.open_period(resource)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("{resource} has no open state period")))
}

/// The usage rows of `day` computed from the periods overlapping it, with open periods counted
/// up to `now`. Rows worth zero seconds are left out.
pub fn day_usage(periods: &[PeriodRow], day: Day, now: Timestamp) -> Vec<UsageRowRecord> {
    let (day_start, day_end) = (day.start().as_millis(), day.end().as_millis());
    let mut totals: BTreeMap<(ResourceRef<'_>, &str), (i64, i64)> = BTreeMap::new();
    for period in periods {
        let end = period.ended_at.unwrap_or(now.as_millis());
        let secs = seconds(period.started_at.max(day_start), end.min(day_end));
        if secs == 0 {
            continue;
        }
        let entry = totals
            .entry((period.resource(), period.account_id.as_str()))
            .or_default();
        match (period.resource_kind, period.state) {
            // A Plain VM bills its existence: stopped time counts like running time.
            (ResourceKind::PlainVm, _) | (ResourceKind::Agent, PeriodState::Running) => {
                entry.0 += secs;
            }
            (ResourceKind::Agent, PeriodState::Paused) => entry.1 += secs,
        }
    }
    let day_text = day.to_string();
    totals
        .into_iter()
        .map(
            |((resource, account_id), (running_s, paused_s))| UsageRowRecord {
                day: day_text.clone(),
                resource_id: resource.id.to_owned(),
                account_id: account_id.to_owned(),
                resource_kind: resource.kind,
                running_s,
                paused_s,
            },
        )
        .collect()
}

/// What a rollup did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupSummary {
    pub first_day: Option<Day>,
    pub last_day: Day,
    pub rows: usize,
}

/// Recomputes daily usage from the periods: every day from the last final one (kept as a
/// margin for replicas whose clocks lag) through today, today counted up to `now`. Each day is
/// replaced whole in its own transaction under the rollup lock, so running it twice, on two
/// replicas at once, or after a crash leaves the same rows.
pub async fn rollup(store: &Store, now: Timestamp) -> Result<RollupSummary> {
    let today = now.day();
    let state = store.read().await?.rollup_state().await?;
    let first = match state.final_through.as_deref() {
        Some(text) => {
            Some(Day::parse(text).map_err(|e| StoreError::Corrupt(format!("rollup state: {e}")))?)
        }
        None => store
            .read()
            .await?
            .earliest_period_start()
            .await?
            .map(|ms| Timestamp::from_millis(ms).day()),
    };
    let mut rows = 0;
    let mut day = first.unwrap_or(today);
    while day <= today {
        let mut tx = store.write().await?;
        tx.lock_rollup().await?;
        let periods = tx
            .periods_overlapping(day.start().as_millis(), day.end().as_millis())
            .await?;
        let usage = day_usage(&periods, day, now);
        rows += usage.len();
        tx.replace_usage_day(&day.to_string(), &usage).await?;
        tx.commit().await?;
        day = day.next();
    }
    let mut tx = store.write().await?;
    let current = tx.lock_rollup().await?;
    let yesterday = Day::from_epoch_days(today.epoch_days() - 1).to_string();
    // Another replica may have finished a later rollup meanwhile; never move the mark back.
    let final_through = match current.final_through {
        Some(existing) if existing > yesterday => existing,
        _ => yesterday,
    };
    tx.record_rollup(Some(&final_through), now.as_millis())
        .await?;
    tx.commit().await?;
    Ok(RollupSummary {
        first_day: first,
        last_day: today,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn period(
        agent: &str,
        account: &str,
        state: PeriodState,
        start: i64,
        end: Option<i64>,
    ) -> PeriodRow {
        PeriodRow {
            id: format!("per_{start}"),
            resource_kind: ResourceKind::Agent,
            resource_id: agent.to_owned(),
            account_id: account.to_owned(),
            state,
            started_at: start,
            ended_at: end,
        }
    }

    #[test]
    fn tick_rule_adds_up_across_splits() {
        // 10.4 s .. 12.6 s .. 15.0 s: the parts add up to the whole.
        assert_eq!(
            seconds(10_400, 12_600) + seconds(12_600, 15_000),
            seconds(10_400, 15_000)
        );
        assert_eq!(seconds(10_400, 10_900), 0);
        assert_eq!(seconds(-1_500, 500), 2);
        assert_eq!(seconds(5_000, 4_000), 0);
    }

    #[test]
    fn a_day_splits_periods_at_midnight_and_by_account() {
        let day = Day::parse("2026-11-23").unwrap();
        let start = day.start().as_millis();
        let periods = [
            period(
                "agt_a",
                "acc_1",
                PeriodState::Paused,
                start - 5_000,
                Some(start + 60_000),
            ),
            period(
                "agt_a",
                "acc_1",
                PeriodState::Running,
                start + 60_000,
                Some(start + 3_600_000),
            ),
            period(
                "agt_a",
                "acc_2",
                PeriodState::Running,
                start + 3_600_000,
                None,
            ),
        ];
        let now = Timestamp::from_millis(day.end().as_millis() + 10_000);
        let rows = day_usage(&periods, day, now);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].account_id.as_str(),
                rows[0].running_s,
                rows[0].paused_s
            ),
            ("acc_1", 3_540, 60)
        );
        assert_eq!(
            (
                rows[1].account_id.as_str(),
                rows[1].running_s,
                rows[1].paused_s
            ),
            ("acc_2", 86_400 - 3_600, 0)
        );
    }

    #[test]
    fn a_plain_vm_bills_its_stopped_time_like_running_time() {
        let day = Day::parse("2026-11-23").unwrap();
        let start = day.start().as_millis();
        let mut stopped = period(
            "pvm_a",
            "acc_1",
            PeriodState::Paused,
            start,
            Some(start + 600_000),
        );
        stopped.resource_kind = ResourceKind::PlainVm;
        let mut running = period(
            "pvm_a",
            "acc_1",
            PeriodState::Running,
            start + 600_000,
            None,
        );
        running.resource_kind = ResourceKind::PlainVm;
        // An Agent with the same id shape stays a separate resource with its own row.
        let agent = period("pvm_a", "acc_1", PeriodState::Paused, start, None);
        let now = Timestamp::from_millis(start + 3_600_000);
        let rows = day_usage(&[stopped, running, agent], day, now);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.resource_kind, r.running_s, r.paused_s))
            .collect();
        assert_eq!(
            summary,
            [
                (ResourceKind::Agent, 0, 3_600),
                (ResourceKind::PlainVm, 3_600, 0)
            ]
        );
    }
}
