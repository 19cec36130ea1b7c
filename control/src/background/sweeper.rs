//! The sweeper: finds what the providers hold under our labels that no live record owns — a
//! server, firewall or volume of an Agent or a Plain VM that is destroyed or was never
//! recorded (a crash, a job that gave up, a hand-made copy) — and reports each at WARN. With
//! `[sweeper] remove` it also deletes them. One replica at a time sweeps (a lease); resources
//! of a live Agent or Plain VM (an operation under way included) are its job's, never the
//! sweeper's.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::each;
use crate::app::App;
use crate::clock::millis;
use crate::error::Result;
use control_api::usage::ResourceKind;

use crate::providers::{Cloud, ID_LABEL, Labels, ProviderError, kind_selector};

/// A provider resource carrying our labels that no live record owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub provider: &'static str,
    /// Which kind of ours its labels name.
    pub kind: ResourceKind,
    /// `server`, `firewall` or `volume`.
    pub what: &'static str,
    pub id: String,
    /// What its `control/id` label names.
    pub owner: String,
}

/// Every page of a listing by `selector`, as (resource id, its labels).
macro_rules! all_pages {
    ($list:expr, $selector:expr) => {{
        let mut items: Vec<(String, Labels)> = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let found = $list($selector, page.as_deref()).await?;
            items.extend(found.items.into_iter().map(|r| (r.id, r.labels)));
            match found.next {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        items
    }};
}

/// What `cloud` holds under `kind`'s label, as (what, id, labels).
async fn labelled(
    cloud: &Cloud,
    kind: ResourceKind,
) -> Result<Vec<(&'static str, String, Labels)>, ProviderError> {
    let selector = kind_selector(kind);
    let mut found: Vec<(&'static str, String, Labels)> = Vec::new();
    let servers = all_pages!(|s, p| cloud.servers.list_servers(s, p), &selector);
    found.extend(servers.into_iter().map(|(id, l)| ("server", id, l)));
    if let Some(firewalls) = &cloud.firewalls {
        let listed = all_pages!(|s, p| firewalls.list_firewalls(s, p), &selector);
        found.extend(listed.into_iter().map(|(id, l)| ("firewall", id, l)));
    }
    if let Some(volumes) = &cloud.volumes {
        let listed = all_pages!(|s, p| volumes.list_volumes(s, p), &selector);
        found.extend(listed.into_iter().map(|(id, l)| ("volume", id, l)));
    }
    Ok(found)
}

async fn remove(cloud: &Cloud, orphan: &Orphan) -> Result<(), ProviderError> {
    let done = match orphan.what {
        "server" => cloud.servers.delete_server(&orphan.id).await,
        "firewall" => match &cloud.firewalls {
            Some(firewalls) => firewalls.delete_firewall(&orphan.id).await,
            None => Ok(()),
        },
        _ => match &cloud.volumes {
            Some(volumes) => volumes.delete_volume(&orphan.id).await,
            None => Ok(()),
        },
    };
    crate::providers::deleted(done)
}

/// Looks through every cloud once; returns the orphans found (and removed, with `remove`).
/// Returns nothing when another replica holds the sweep.
pub async fn sweep(app: &App, every: Duration, remove_them: bool) -> Result<Vec<Orphan>> {
    let now = app.clock.now().as_millis();
    let mut tx = app.store.write().await?;
    let leader = tx
        .acquire_lease(
            "sweeper",
            &app.replica_id,
            now,
            now + millis(every.saturating_mul(2)),
        )
        .await?;
    tx.commit().await?;
    if !leader {
        return Ok(Vec::new());
    }
    let mut orphans = Vec::new();
    for (cloud, kind) in app
        .providers
        .clouds()
        .flat_map(|cloud| [ResourceKind::Agent, ResourceKind::PlainVm].map(|kind| (cloud, kind)))
    {
        let found = match labelled(cloud, kind).await {
            Ok(found) => found,
            Err(e) => {
                warn!(provider = cloud.name, error = %e, "sweeper: cannot list the provider's resources");
                continue;
            }
        };
        for (what, id, labels) in found {
            let owner = labels.get(ID_LABEL).cloned().unwrap_or_default();
            if live(app, kind, &owner).await? {
                continue;
            }
            let orphan = Orphan {
                provider: cloud.name,
                kind,
                what,
                id,
                owner,
            };
            warn!(
                provider = orphan.provider,
                kind = ?orphan.kind,
                resource = orphan.what,
                id = %orphan.id,
                owner = %orphan.owner,
                "sweeper: a resource labelled as ours that no live Agent or Plain VM owns"
            );
            if remove_them {
                match remove(cloud, &orphan).await {
                    Ok(()) => {
                        info!(provider = orphan.provider, resource = orphan.what, id = %orphan.id, "sweeper: removed it");
                    }
                    Err(e) => {
                        warn!(provider = orphan.provider, resource = orphan.what, id = %orphan.id, error = %e, "sweeper: cannot remove it");
                    }
                }
            }
            orphans.push(orphan);
        }
    }
    Ok(orphans)
}

/// Whether `kind` `id` is recorded and not destroyed.
async fn live(app: &App, kind: ResourceKind, id: &str) -> Result<bool> {
    let mut tx = app.store.read().await?;
    Ok(match kind {
        ResourceKind::Agent => tx
            .agent(id)
            .await?
            .is_some_and(|a| a.destroyed_at.is_none()),
        ResourceKind::PlainVm => tx
            .plain_vm(id)
            .await?
            .is_some_and(|vm| vm.destroyed_at.is_none()),
    })
}

/// Sweeps every `every`.
pub(super) async fn run(app: App, every: Duration, shutdown: watch::Receiver<bool>) {
    let remove_them = app.settings.sweep_remove;
    each(every, shutdown, || async {
        match sweep(&app, every, remove_them).await {
            Ok(orphans) if orphans.is_empty() => debug!("sweeper: nothing unowned"),
            Ok(orphans) => info!(orphans = orphans.len(), "sweeper: pass done"),
            Err(e) => error!(error = %e, "sweeping the providers failed"),
        }
    })
    .await;
}
