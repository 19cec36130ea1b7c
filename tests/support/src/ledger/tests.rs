//! Unit tests of the checker: a history worked out by hand passes, and each kind of break it
//! must catch is caught, in words that name it.

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
