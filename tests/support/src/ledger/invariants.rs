//! The checks behind [`check`]: one function per invariant, each adding what it finds, in
//! words, to the list of violations.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Day, Lifetime, Period, Resource, Snapshot, Transfer, Usage, UsageKey, instant, seconds_in_day,
    usage_totals,
};

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
