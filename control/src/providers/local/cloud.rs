//! The local provider's firewalls, volumes and tunnels: what Hetzner and Cloudflare keep for a
//! real Agent or Plain VM, kept here as records with the same rules a cloud applies — names
//! unique (a second create is a `Conflict` to adopt), deleting what is gone `NotFound`, a
//! firewall or volume still in use by a live server refused until the server is gone
//! (`resource_in_use`, transient as Hetzner's is to its client), a server's deletion
//! detaching its firewalls.
//!
//! Nothing is enforced on the wire: a local VM is processes on this machine, with no network
//! of its own for a firewall to filter. A volume is a directory (with the processes backing),
//! and a tunnel a record with its token and routes, which the stand-in cloudflared is given.
//!
//! This file holds the records and the rules they share; [`super::firewalls`],
//! [`super::volumes`] and [`super::tunnels`] implement the capabilities.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LocalProvider;
use super::records::Records;
use crate::providers::{Firewall, Page, ProviderError, Servers, Tunnel, Volume};

/// What the local provider keeps of a tunnel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct LocalTunnel {
    pub(super) tunnel: Tunnel,
    pub(super) token: String,
    /// Hostname -> the service it reaches.
    pub(super) routes: BTreeMap<String, String>,
}

/// The local provider's records besides its VMs.
#[derive(Debug)]
pub(super) struct CloudRecords {
    pub(super) firewalls: Records<Firewall>,
    pub(super) volumes: Records<Volume>,
    pub(super) tunnels: Records<LocalTunnel>,
    /// Where volumes keep their data, with the processes backing.
    pub(super) volume_data: Option<std::path::PathBuf>,
}

impl CloudRecords {
    pub(super) fn memory() -> Self {
        Self {
            firewalls: Records::memory(),
            volumes: Records::memory(),
            tunnels: Records::memory(),
            volume_data: None,
        }
    }

    /// Records under `dir`, shared by every replica.
    pub(super) fn dir(dir: &std::path::Path) -> std::io::Result<Self> {
        let volume_data = dir.join("volume-data");
        std::fs::create_dir_all(&volume_data)?;
        Ok(Self {
            firewalls: Records::dir(&dir.join("firewalls"))?,
            volumes: Records::dir(&dir.join("volumes"))?,
            tunnels: Records::dir(&dir.join("tunnels"))?,
            volume_data: Some(volume_data),
        })
    }
}

/// A provider id for a new record: a prefix and a ULID, as a cloud's opaque ids are.
pub(super) fn new_record_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

pub(super) fn taken(what: &str, name: &str) -> ProviderError {
    ProviderError::conflict(format!("a {what} named {name} exists already"))
        .with_code("uniqueness_error")
}

pub(super) fn in_use(what: &str, id: &str, server: &str) -> ProviderError {
    ProviderError::transient(format!("{what} {id} is still in use by server {server}"))
        .with_code("resource_in_use")
}

/// Records that `firewall` applies to `server_id`; whether that is new.
pub(super) fn applies_to(firewall: &mut Firewall, server_id: &str) -> bool {
    if firewall.servers.iter().any(|s| s == server_id) {
        return false;
    }
    firewall.servers.push(server_id.to_owned());
    true
}

pub(super) fn page<T>(all: BTreeMap<String, T>, keep: impl Fn(&T) -> bool) -> Page<T> {
    Page {
        items: all.into_values().filter(|item| keep(item)).collect(),
        next: None,
    }
}

impl LocalProvider {
    /// The first of `servers` that still exists.
    pub(super) async fn live_server(
        &self,
        servers: &[String],
    ) -> Result<Option<String>, ProviderError> {
        for server in servers {
            if self.get_server(server).await?.is_some() {
                return Ok(Some(server.clone()));
            }
        }
        Ok(None)
    }

    /// Detaches the firewalls applied to server `server_id`, which is gone (Hetzner does so
    /// when a server's deletion ends; the firewalls themselves stay). A firewall deleted
    /// meanwhile has nothing to detach.
    pub(super) async fn detach_firewalls(&self, server_id: &str) -> Result<(), ProviderError> {
        for (id, firewall) in self.cloud.firewalls.all()? {
            if !firewall.servers.iter().any(|s| s == server_id) {
                continue;
            }
            let detached = self
                .cloud
                .firewalls
                .update(
                    &id,
                    || ProviderError::not_found(format!("firewall {id}")),
                    |firewall| {
                        let before = firewall.servers.len();
                        firewall.servers.retain(|s| s != server_id);
                        firewall.servers.len() != before
                    },
                )
                .await;
            crate::providers::deleted(detached)?;
        }
        Ok(())
    }

    /// Attaches the volumes and applies the firewalls a server is being created with, before
    /// the server exists: a cloud does both as part of the create, so a create repeated after
    /// a crash finds them attached already. Unknown ids are refused as a cloud refuses them.
    pub(super) async fn attach(
        &self,
        server_id: &str,
        firewall_ids: &[String],
        volume_ids: &[String],
    ) -> Result<(), ProviderError> {
        let unknown = |what: &str, id: &str| {
            ProviderError::permanent(format!(
                "the server names {what} {id}, which does not exist"
            ))
            .with_code("invalid_input")
        };
        for id in firewall_ids {
            self.cloud
                .firewalls
                .update(id, || unknown("firewall", id), |f| applies_to(f, server_id))
                .await?;
        }
        for id in volume_ids {
            let owner = self
                .cloud
                .volumes
                .get(id)?
                .ok_or_else(|| unknown("volume", id))?
                .server;
            if let Some(other) = owner.filter(|other| other != server_id)
                && self.get_server(&other).await?.is_some()
            {
                return Err(in_use("volume", id, &other));
            }
            self.cloud
                .volumes
                .update(
                    id,
                    || unknown("volume", id),
                    |volume| {
                        volume.server.replace(server_id.to_owned()).as_deref() != Some(server_id)
                    },
                )
                .await?;
        }
        Ok(())
    }
}
