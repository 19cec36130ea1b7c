//! The reconciler: compares each provider's view of the VMs with the ledger's and records what
//! the provider says where they disagree, at the instant it is noticed.
//!
//! A VM off (or gone) while recorded running is recorded paused; a VM running while recorded
//! paused is recorded running. Agents and Plain VMs alike (a Plain VM shut down from inside
//! its OS is recorded stopped, so it can be started again; its billing counts existence
//! either way); those with an operation under way are left to it. One replica
//! at a time reconciles (a lease), since provider APIs have rate limits: each cloud's servers
//! are read by our label a page at a time (Hetzner: 50 a call), never one call per Agent.
//!
//! A pass over N Agents costs ceil(N/50) calls a cloud, so at a fixed interval its calls an hour
//! grow with N. The reconciler counts what each pass cost and stretches its interval so that
//! its calls stay within a share (`[reconciler] budget_fraction`, a quarter by default) of each
//! cloud's hourly budget ([`crate::providers::Servers::requests_per_hour`]), never running more
//! often than `[reconciler] interval_secs`: the rest of the budget is provisioning's. The lease
//! is held for twice the stretched interval, so a second replica does not run the passes the
//! first one leaves out.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Duration;

use control_api::agents::PeriodState;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use control_api::usage::ResourceKind;

use crate::agents::{self, Cas};
use crate::app::App;
use crate::clock::millis;
use crate::error::Result;
use crate::plain_vms;
use crate::providers::{Cloud, ProviderError, kind_selector};
use crate::store::DbText;

/// The reconciler's lease.
const LEASE: &str = "reconciler";

/// Compares every live Agent with its provider once; returns how many were corrected.
pub async fn reconcile(app: &App, every: Duration) -> Result<usize> {
    Ok(reconcile_pass(app, every)
        .await?
        .map_or(0, |pass| pass.corrected))
}

/// What one pass cost a cloud: the servers it read and the calls that took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloudPass {
    pub servers: usize,
    pub calls: u64,
}

/// What one pass did: the Agents it corrected and what it cost each cloud it read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub corrected: usize,
    pub clouds: BTreeMap<&'static str, CloudPass>,
}

/// One pass, if this replica holds (or takes) the lease, which it keeps for twice `every`;
/// `None` when another replica holds it.
pub async fn reconcile_pass(app: &App, every: Duration) -> Result<Option<Pass>> {
    if !hold_lease(app, every).await? {
        return Ok(None);
    }
    let mut tx = app.store.read().await?;
    let agents = tx.reconcilable_agents().await?;
    let plain_vms = tx.reconcilable_plain_vms().await?;
    drop(tx);
    let recorded = agents
        .into_iter()
        .map(|row| (ResourceKind::Agent, row))
        .chain(
            plain_vms
                .into_iter()
                .map(|row| (ResourceKind::PlainVm, row)),
        );
    let mut power: BTreeMap<(&str, ResourceKind), Option<BTreeMap<String, bool>>> = BTreeMap::new();
    let mut pass = Pass::default();
    for (kind, row) in recorded {
        let Some(cloud) = app.providers.get(&row.provider) else {
            continue;
        };
        let census = match power.entry((cloud.name, kind)) {
            Entry::Occupied(read) => read.into_mut(),
            Entry::Vacant(unread) => {
                let cost = pass.clouds.entry(cloud.name).or_default();
                let census = match servers_on(cloud, kind, &mut cost.calls).await {
                    Ok(census) => {
                        cost.servers += census.len();
                        Some(census)
                    }
                    Err(e) => {
                        warn!(provider = cloud.name, error = %e, "reconciler: cannot list the VMs");
                        None
                    }
                };
                unread.insert(census)
            }
        };
        let Some(census) = census else {
            continue;
        };
        let on = census.get(&row.provider_id).copied();
        let (from, to, why) = match (row.state.as_str(), on) {
            ("running", Some(false)) => (
                PeriodState::Running,
                PeriodState::Paused,
                "the provider reports the VM off",
            ),
            ("running", None) => (
                PeriodState::Running,
                PeriodState::Paused,
                "the provider has no such VM",
            ),
            ("paused", Some(true)) => (
                PeriodState::Paused,
                PeriodState::Running,
                "the provider reports the VM running",
            ),
            _ => continue,
        };
        let now = app.clock.now();
        let mut tx = app.store.write().await?;
        let owner = match kind {
            ResourceKind::Agent => agents::record_observed(
                &mut tx,
                app.ingest.records().clone(),
                &row.id,
                Cas::Observed { from, to },
                now,
            )
            .await?
            .map(|recorded| recorded.owner),
            ResourceKind::PlainVm => {
                plain_vms::record_observed(&mut tx, &row.id, from, to, now).await?
            }
        };
        tx.commit().await?;
        if let Some(owner) = owner {
            pass.corrected += 1;
            let state = to.as_db();
            if to == PeriodState::Paused {
                warn!(kind = ?kind, resource_id = %row.id, account_id = %owner, state, "reconciler: {why}; recorded from now");
            } else {
                info!(kind = ?kind, resource_id = %row.id, account_id = %owner, state, "reconciler: {why}; recorded from now");
            }
        }
    }
    Ok(Some(pass))
}

/// Takes or renews the reconciler's lease for twice `every`; whether this replica holds it.
async fn hold_lease(app: &App, every: Duration) -> Result<bool> {
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    let held = tx
        .acquire_lease(
            LEASE,
            &app.replica_id,
            now,
            now + millis(every.saturating_mul(2)),
        )
        .await?;
    tx.commit().await?;
    Ok(held)
}

/// Whether each of the cloud's servers of `kind` is on, by server id, read a page at a time;
/// `calls` counts the pages read.
async fn servers_on(
    cloud: &Cloud,
    kind: ResourceKind,
    calls: &mut u64,
) -> Result<BTreeMap<String, bool>, ProviderError> {
    let selector = kind_selector(kind);
    let mut census = BTreeMap::new();
    let mut page: Option<String> = None;
    loop {
        *calls += 1;
        let found = cloud
            .servers
            .list_servers(&selector, page.as_deref())
            .await?;
        census.extend(found.items.into_iter().map(|s| (s.id, s.status.is_on())));
        match found.next {
            Some(next) => page = Some(next),
            None => return Ok(census),
        }
    }
}

/// How often the reconciler may run: every `every` at most, and within `budget_fraction` of
/// each cloud's hourly request budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacing {
    pub every: Duration,
    pub budget_fraction: f64,
}

/// The interval that keeps passes costing `calls` at most `fraction` of `per_hour` calls an
/// hour, and never shorter than `every`. Rounded up to the millisecond, never down.
pub fn paced_interval(every: Duration, calls: u64, per_hour: u32, fraction: f64) -> Duration {
    let allowed = f64::from(per_hour) * fraction;
    if calls == 0 || allowed.is_nan() || allowed <= 0.0 {
        return every;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "calls a pass costs: far below 2^52"
    )]
    let needed_ms = (calls as f64 * 3_600_000.0 / allowed).ceil();
    // Saturating: a share so small that the wait is beyond reckoning waits "forever".
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive and saturating"
    )]
    let needed = Duration::from_millis(needed_ms as u64);
    every.max(needed)
}

/// Why the interval is what it is: the cloud whose budget sets it, with its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Paced {
    pub interval: Duration,
    /// The cloud that stretched it (none: `every` is enough for every cloud).
    pub by: Option<(&'static str, CloudPass, u32)>,
}

impl Pacing {
    /// The interval after `pass`: the longest any cloud's budget needs. `budget` gives a
    /// cloud's hourly budget (`None`: it counts none).
    pub fn after(&self, pass: &Pass, budget: impl Fn(&str) -> Option<u32>) -> Paced {
        let mut paced = Paced {
            interval: self.every,
            by: None,
        };
        for (name, cost) in &pass.clouds {
            let Some(per_hour) = budget(name) else {
                continue;
            };
            let interval = paced_interval(self.every, cost.calls, per_hour, self.budget_fraction);
            if interval > paced.interval {
                paced = Paced {
                    interval,
                    by: Some((name, *cost, per_hour)),
                };
            }
        }
        paced
    }
}

/// One pass, if this replica holds the lease (taken for twice `interval`, the one chosen after
/// the pass before), and the interval until the next, chosen from what this one cost; the
/// lease is then held until twice that, so no other replica runs a pass before it is due.
/// `None` when another replica holds the lease.
pub async fn reconcile_paced(
    app: &App,
    pacing: Pacing,
    interval: Duration,
) -> Result<Option<(Pass, Paced)>> {
    let Some(pass) = reconcile_pass(app, interval).await? else {
        return Ok(None);
    };
    let paced = pacing.after(&pass, |name| {
        app.providers
            .get(name)
            .and_then(|cloud| cloud.servers.requests_per_hour())
    });
    if paced.interval != interval {
        hold_lease(app, paced.interval).await?;
    }
    Ok(Some((pass, paced)))
}

/// Reconciles the ledger with the providers, paced as `pacing` says.
pub(super) async fn run(app: App, pacing: Pacing, mut shutdown: watch::Receiver<bool>) {
    let mut interval = pacing.every;
    loop {
        match reconcile_paced(&app, pacing, interval).await {
            Ok(Some((pass, paced))) => {
                if paced.interval != interval {
                    say_pace(&pacing, &paced);
                }
                interval = paced.interval;
                if pass.corrected > 0 {
                    debug!(corrected = pass.corrected, "reconciler corrected agents");
                }
            }
            // Another replica reconciles: look again as often as configured, in case it stops.
            Ok(None) => interval = pacing.every,
            Err(e) => error!(error = %e, "reconciling with the providers failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// Says at INFO why the reconciler runs as often as it now does, with the figures.
fn say_pace(pacing: &Pacing, paced: &Paced) {
    let secs = |d: Duration| d.as_secs_f64();
    let Some((provider, cost, per_hour)) = paced.by else {
        info!(
            interval_secs = secs(paced.interval),
            budget_fraction = pacing.budget_fraction,
            "reconciler: back to every {:.0} s, within {} of every cloud's budget",
            secs(paced.interval),
            pacing.budget_fraction,
        );
        return;
    };
    let pass_calls = cost.calls;
    #[expect(clippy::cast_precision_loss, reason = "figures for people")]
    let calls_per_hour = pass_calls as f64 * 3_600.0 / secs(paced.interval);
    info!(
        provider,
        servers = cost.servers,
        pass_calls,
        interval_secs = secs(paced.interval),
        configured_secs = secs(pacing.every),
        calls_per_hour = format!("{calls_per_hour:.1}"),
        budget_per_hour = per_hour,
        budget_fraction = pacing.budget_fraction,
        "reconciler: a pass over {} {provider} servers costs {pass_calls} calls; running every \
         {:.0} s instead of every {:.0} s keeps it at {calls_per_hour:.1} calls an hour, within \
         {} of the {per_hour} an hour budget",
        cost.servers,
        secs(paced.interval),
        secs(pacing.every),
        pacing.budget_fraction,
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MINUTE: Duration = Duration::from_mins(1);

    /// A pass over `agents` Agents on Hetzner: a call per 50 (one for an empty project).
    fn hetzner_pass(agents: u64) -> Pass {
        let calls = agents.div_ceil(50).max(1);
        Pass {
            corrected: 0,
            clouds: BTreeMap::from([(
                "hetzner",
                CloudPass {
                    servers: usize::try_from(agents).unwrap(),
                    calls,
                },
            )]),
        }
    }

    #[test]
    fn a_small_fleet_runs_as_often_as_configured() {
        // 1,000 Agents: 20 calls a pass, 1,200 an hour every minute: more than a quarter of
        // 3,600, so every 80 s (900 an hour).
        let pacing = Pacing {
            every: MINUTE,
            budget_fraction: 0.25,
        };
        let paced = pacing.after(&hetzner_pass(1_000), |_| Some(3_600));
        assert_eq!(paced.interval, Duration::from_secs(80));
        assert_eq!(
            paced.by,
            Some((
                "hetzner",
                CloudPass {
                    servers: 1_000,
                    calls: 20
                },
                3_600
            ))
        );
        // 700 Agents: 14 calls, 840 an hour: within 900, so as configured.
        let paced = pacing.after(&hetzner_pass(700), |_| Some(3_600));
        assert_eq!((paced.interval, paced.by), (MINUTE, None));
        // 10,000 Agents: 200 calls a pass, 900 an hour: every 800 s.
        let paced = pacing.after(&hetzner_pass(10_000), |_| Some(3_600));
        assert_eq!(paced.interval, Duration::from_secs(800));
        // A cloud that counts no budget (the local one) never stretches it.
        let paced = pacing.after(&hetzner_pass(10_000), |_| None);
        assert_eq!((paced.interval, paced.by), (MINUTE, None));
    }

    #[test]
    fn the_tightest_cloud_sets_the_interval() {
        let mut pass = hetzner_pass(5_000);
        pass.clouds.insert(
            "fly",
            CloudPass {
                servers: 100,
                calls: 2,
            },
        );
        let pacing = Pacing {
            every: MINUTE,
            budget_fraction: 0.5,
        };
        let budgets = |name: &str| Some(if name == "fly" { 10 } else { 3_600 });
        // hetzner: 100 calls of 1,800 an hour: 200 s; fly: 2 calls of 5 an hour: 1,440 s.
        let paced = pacing.after(&pass, budgets);
        assert_eq!(paced.interval, Duration::from_mins(24));
        assert_eq!(paced.by.map(|(name, _, _)| name), Some("fly"));
    }

    proptest! {
        /// Whatever the fleet, the budget and the share: the passes' calls an hour stay within
        /// the share, the interval is never below the configured one, and it is no longer
        /// than it needs to be (within the millisecond it is rounded up to).
        #[test]
        fn passes_stay_within_their_share_of_the_budget(
            agents in 0_u64..2_000_000,
            every_secs in 1_u64..3_600,
            per_hour in 1_u32..100_000,
            fraction in 0.001_f64..=1.0,
        ) {
            let every = Duration::from_secs(every_secs);
            let calls = agents.div_ceil(50).max(1);
            let interval = paced_interval(every, calls, per_hour, fraction);
            prop_assert!(interval >= every);
            #[expect(clippy::cast_precision_loss, reason = "test figures")]
            let per_hour_spent = calls as f64 * 3_600.0 / interval.as_secs_f64();
            let allowed = f64::from(per_hour) * fraction;
            prop_assert!(
                per_hour_spent <= allowed * (1.0 + 1e-9),
                "{calls} calls every {interval:?}: {per_hour_spent}/h over {allowed}/h"
            );
            if interval > every {
                let shorter = interval.saturating_sub(Duration::from_millis(2));
                #[expect(clippy::cast_precision_loss, reason = "test figures")]
                let spent_if_shorter = calls as f64 * 3_600.0 / shorter.as_secs_f64();
                prop_assert!(spent_if_shorter > allowed, "{interval:?} is longer than needed");
            }
        }
    }
}
