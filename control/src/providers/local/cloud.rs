//! The local provider's firewalls, volumes and tunnels: what Hetzner and Cloudflare keep for a
//! real Agent or Plain VM, kept here as records with the same rules a cloud applies — names
//! unique (a second create is a `Conflict` to adopt), deleting what is gone `NotFound`, a
//! firewall or volume still in use by a live server refused until the server is gone.
//!
//! Nothing is enforced on the wire: a local VM is processes on this machine, with no network
//! of its own for a firewall to filter. A volume is a directory (with the processes backing),
//! and a tunnel a record with its token and routes, which the stand-in cloudflared is given.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::records::{Records, Write};
use super::{LocalProvider, matches};
use crate::providers::{
    Firewall, FirewallRule, FirewallSpec, Firewalls, Labels, Page, ProviderError, Secret, Servers,
    Tunnel, Tunnels, Volume, VolumeSpec, Volumes,
};

/// What the local provider keeps of a tunnel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct LocalTunnel {
    tunnel: Tunnel,
    token: String,
    /// Hostname -> the service it reaches.
    routes: BTreeMap<String, String>,
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
fn new_record_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

fn taken(what: &str, name: &str) -> ProviderError {
    ProviderError::conflict(format!("a {what} named {name} exists already"))
        .with_code("uniqueness_error")
}

fn in_use(what: &str, id: &str, server: &str) -> ProviderError {
    ProviderError::transient(format!("{what} {id} is still in use by server {server}"))
        .with_code("resource_in_use")
}

fn page<T>(all: BTreeMap<String, T>, keep: impl Fn(&T) -> bool) -> Page<T> {
    Page {
        items: all.into_values().filter(|item| keep(item)).collect(),
        next: None,
    }
}

impl LocalProvider {
    /// The first of `servers` that still exists.
    async fn live_server(&self, servers: &[String]) -> Result<Option<String>, ProviderError> {
        for server in servers {
            if self.get_server(server).await?.is_some() {
                return Ok(Some(server.clone()));
            }
        }
        Ok(None)
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
                .change(|all| {
                    let mut firewall = all
                        .get(id)
                        .cloned()
                        .ok_or_else(|| unknown("firewall", id))?;
                    if firewall.servers.iter().any(|s| s == server_id) {
                        return Ok((Write::Nothing, ()));
                    }
                    firewall.servers.push(server_id.to_owned());
                    Ok((Write::Put(id.clone(), firewall), ()))
                })
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
                .change(|all| {
                    let mut volume = all.get(id).cloned().ok_or_else(|| unknown("volume", id))?;
                    volume.server = Some(server_id.to_owned());
                    Ok((Write::Put(id.clone(), volume), ()))
                })
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Firewalls for LocalProvider {
    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, ProviderError> {
        self.cloud
            .firewalls
            .change(|all| {
                if all.values().any(|f| f.name == spec.name) {
                    return Err(taken("firewall", &spec.name));
                }
                let firewall = Firewall {
                    id: new_record_id("fw"),
                    name: spec.name.clone(),
                    labels: spec.labels.clone(),
                    rules: spec.rules.clone(),
                    servers: Vec::new(),
                };
                Ok((Write::Put(firewall.id.clone(), firewall.clone()), firewall))
            })
            .await
    }

    async fn get_firewall(&self, id: &str) -> Result<Option<Firewall>, ProviderError> {
        self.cloud.firewalls.get(id)
    }

    async fn list_firewalls(
        &self,
        selector: &Labels,
        _page: Option<&str>,
    ) -> Result<Page<Firewall>, ProviderError> {
        Ok(page(self.cloud.firewalls.all()?, |f| {
            matches(&f.labels, selector)
        }))
    }

    async fn set_rules(&self, id: &str, rules: &[FirewallRule]) -> Result<(), ProviderError> {
        self.cloud
            .firewalls
            .change(|all| {
                let mut firewall = all
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ProviderError::not_found(format!("firewall {id}")))?;
                firewall.rules = rules.to_vec();
                Ok((Write::Put(id.to_owned(), firewall), ()))
            })
            .await
    }

    async fn apply_to_server(&self, id: &str, server_id: &str) -> Result<(), ProviderError> {
        if self.get_server(server_id).await?.is_none() {
            return Err(ProviderError::not_found(format!("server {server_id}")));
        }
        self.cloud
            .firewalls
            .change(|all| {
                let mut firewall = all
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ProviderError::not_found(format!("firewall {id}")))?;
                if firewall.servers.iter().any(|s| s == server_id) {
                    return Ok((Write::Nothing, ()));
                }
                firewall.servers.push(server_id.to_owned());
                Ok((Write::Put(id.to_owned(), firewall), ()))
            })
            .await
    }

    async fn delete_firewall(&self, id: &str) -> Result<(), ProviderError> {
        let Some(firewall) = self.cloud.firewalls.get(id)? else {
            return Err(ProviderError::not_found(format!("firewall {id}")));
        };
        if let Some(server) = self.live_server(&firewall.servers).await? {
            return Err(in_use("firewall", id, &server));
        }
        self.cloud
            .firewalls
            .change(|_| Ok((Write::Delete(id.to_owned()), ())))
            .await
    }
}

#[async_trait]
impl Volumes for LocalProvider {
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProviderError> {
        let volume = self
            .cloud
            .volumes
            .change(|all| {
                if all.values().any(|v| v.name == spec.name) {
                    return Err(taken("volume", &spec.name));
                }
                let volume = Volume {
                    id: new_record_id("vol"),
                    name: spec.name.clone(),
                    size_gb: spec.size_gb,
                    labels: spec.labels.clone(),
                    server: None,
                };
                Ok((Write::Put(volume.id.clone(), volume.clone()), volume))
            })
            .await?;
        if let Some(data) = &self.cloud.volume_data {
            let path = data.join(&volume.id);
            std::fs::create_dir_all(&path)
                .map_err(|e| super::vm::transient("creating", &path, e))?;
        }
        Ok(volume)
    }

    async fn get_volume(&self, id: &str) -> Result<Option<Volume>, ProviderError> {
        self.cloud.volumes.get(id)
    }

    async fn list_volumes(
        &self,
        selector: &Labels,
        _page: Option<&str>,
    ) -> Result<Page<Volume>, ProviderError> {
        Ok(page(self.cloud.volumes.all()?, |v| {
            matches(&v.labels, selector)
        }))
    }

    async fn delete_volume(&self, id: &str) -> Result<(), ProviderError> {
        let Some(volume) = self.cloud.volumes.get(id)? else {
            return Err(ProviderError::not_found(format!("volume {id}")));
        };
        if let Some(server) = self.live_server(volume.server.as_slice()).await? {
            return Err(in_use("volume", id, &server));
        }
        self.cloud
            .volumes
            .change(|_| Ok((Write::Delete(id.to_owned()), ())))
            .await?;
        if let Some(data) = &self.cloud.volume_data {
            let path = data.join(&volume.id);
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(super::vm::transient("deleting", &path, e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Tunnels for LocalProvider {
    async fn create_tunnel(&self, name: &str) -> Result<Tunnel, ProviderError> {
        let token = crate::auth::random_secret()
            .map_err(|e| ProviderError::transient(format!("no randomness for a token: {e}")))?;
        self.cloud
            .tunnels
            .change(|all| {
                if all.values().any(|t| t.tunnel.name == name) {
                    return Err(taken("tunnel", name));
                }
                let tunnel = Tunnel {
                    id: new_record_id("tun"),
                    name: name.to_owned(),
                };
                let record = LocalTunnel {
                    tunnel: tunnel.clone(),
                    token,
                    routes: BTreeMap::new(),
                };
                Ok((Write::Put(tunnel.id.clone(), record), tunnel))
            })
            .await
    }

    async fn find_tunnel(&self, name: &str) -> Result<Option<Tunnel>, ProviderError> {
        Ok(self
            .cloud
            .tunnels
            .all()?
            .into_values()
            .map(|t| t.tunnel)
            .find(|t| t.name == name))
    }

    async fn tunnel_token(&self, id: &str) -> Result<Secret, ProviderError> {
        self.cloud
            .tunnels
            .get(id)?
            .map(|t| Secret(t.token))
            .ok_or_else(|| ProviderError::not_found(format!("tunnel {id}")))
    }

    async fn route(&self, id: &str, hostname: &str, service: &str) -> Result<(), ProviderError> {
        self.cloud
            .tunnels
            .change(|all| {
                if let Some(other) = all
                    .values()
                    .find(|t| t.tunnel.id != id && t.routes.contains_key(hostname))
                {
                    return Err(ProviderError::conflict(format!(
                        "{hostname} is routed through tunnel {} already",
                        other.tunnel.id
                    ))
                    .with_code("record_exists"));
                }
                let mut record = all
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ProviderError::not_found(format!("tunnel {id}")))?;
                record
                    .routes
                    .insert(hostname.to_owned(), service.to_owned());
                Ok((Write::Put(id.to_owned(), record), ()))
            })
            .await
    }

    async fn delete_tunnel(&self, id: &str, _hostname: &str) -> Result<(), ProviderError> {
        self.cloud
            .tunnels
            .change(|all| {
                if !all.contains_key(id) {
                    return Err(ProviderError::not_found(format!("tunnel {id}")));
                }
                Ok((Write::Delete(id.to_owned()), ()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use control_api::usage::ResourceKind;

    use super::*;
    use crate::providers::local::LocalVmConfig;
    use crate::providers::{Direction, ErrorKind, resource_labels};

    fn ssh_only() -> Vec<FirewallRule> {
        vec![FirewallRule {
            direction: Direction::In,
            protocol: "tcp".to_owned(),
            port: Some("22".to_owned()),
            source_ips: vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()],
            destination_ips: Vec::new(),
            description: Some("ssh".to_owned()),
        }]
    }

    #[tokio::test]
    async fn firewalls_keep_names_unique_and_outlive_no_server() {
        let local = LocalProvider::in_memory();
        let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
        let spec = FirewallSpec {
            name: "pvm-1".to_owned(),
            labels: labels.clone(),
            rules: ssh_only(),
        };
        let firewall = local.create_firewall(&spec).await.unwrap();
        let again = local.create_firewall(&spec).await.unwrap_err();
        assert_eq!(
            (again.kind, again.code.as_deref()),
            (ErrorKind::Conflict, Some("uniqueness_error"))
        );
        let found = local.list_firewalls(&labels, None).await.unwrap().items;
        assert_eq!(
            found,
            vec![firewall.clone()],
            "found by our label, to adopt"
        );
        let other = resource_labels(ResourceKind::PlainVm, "pvm_2");
        assert!(
            local
                .list_firewalls(&other, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );

        local.set_rules(&firewall.id, &[]).await.unwrap();
        assert!(
            local
                .get_firewall(&firewall.id)
                .await
                .unwrap()
                .unwrap()
                .rules
                .is_empty()
        );

        // Applied at the server's creation; in use until the server is gone.
        let mut server = crate::providers::local::tests::spec();
        server.firewall_ids = vec![firewall.id.clone()];
        let server = local.create_server(&server).await.unwrap();
        let applied = local.get_firewall(&firewall.id).await.unwrap().unwrap();
        assert_eq!(applied.servers, vec![server.id.clone()]);
        let busy = local.delete_firewall(&firewall.id).await.unwrap_err();
        assert_eq!(
            (busy.kind, busy.code.as_deref()),
            (ErrorKind::Transient, Some("resource_in_use"))
        );
        local.delete_server(&server.id).await.unwrap();
        local.delete_firewall(&firewall.id).await.unwrap();
        let gone = local.delete_firewall(&firewall.id).await.unwrap_err();
        assert_eq!(gone.kind, ErrorKind::NotFound, "a repeated delete is done");
    }

    #[tokio::test]
    async fn a_server_naming_an_unknown_volume_is_refused() {
        let local = LocalProvider::in_memory();
        let mut server = crate::providers::local::tests::spec();
        server.volume_ids = vec!["vol-missing".to_owned()];
        let refused = local.create_server(&server).await.unwrap_err();
        assert_eq!(
            (refused.kind, refused.code.as_deref()),
            (ErrorKind::Permanent, Some("invalid_input"))
        );
        assert!(local.get_server("agt_1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn volumes_are_directories_that_outlive_their_server() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalProvider::with_processes(
            &dir.path().join("local-vms"),
            LocalVmConfig {
                vm_agent: "/nonexistent/vm-agent".into(),
                cloudflared: "/nonexistent/cloudflared".into(),
                control_urls: vec!["http://127.0.0.1:9".to_owned()],
                heartbeat_interval: Duration::from_secs(10),
            },
        )
        .unwrap();
        let labels = resource_labels(ResourceKind::Agent, "agt_1");
        let spec = VolumeSpec {
            name: "agt-1-home".to_owned(),
            size_gb: 10,
            location: None,
            labels: labels.clone(),
            format: Some("ext4".to_owned()),
        };
        let volume = local.create_volume(&spec).await.unwrap();
        let data = dir
            .path()
            .join("local-vms/.cloud/volume-data")
            .join(&volume.id);
        assert!(data.is_dir());
        assert_eq!(
            local.create_volume(&spec).await.unwrap_err().kind,
            ErrorKind::Conflict
        );
        // What another replica reads from the same directory.
        assert_eq!(
            local.list_volumes(&labels, None).await.unwrap().items,
            vec![volume.clone()]
        );
        local.delete_volume(&volume.id).await.unwrap();
        assert!(!data.exists());
        assert_eq!(
            local.delete_volume(&volume.id).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn tunnels_have_a_token_and_one_route_per_hostname() {
        let local = LocalProvider::in_memory();
        let tunnel = local.create_tunnel("agt-1").await.unwrap();
        assert_eq!(
            local.create_tunnel("agt-1").await.unwrap_err().kind,
            ErrorKind::Conflict
        );
        assert_eq!(
            local.find_tunnel("agt-1").await.unwrap(),
            Some(tunnel.clone())
        );
        let token = local.tunnel_token(&tunnel.id).await.unwrap();
        assert!(token.0.len() >= 32, "a real secret");
        assert_eq!(format!("{token:?}"), "[redacted]");
        local
            .route(&tunnel.id, "agt-1.example.test", "http://localhost:8080")
            .await
            .unwrap();
        // Routing again is fine; another tunnel may not take the hostname.
        local
            .route(&tunnel.id, "agt-1.example.test", "http://localhost:8080")
            .await
            .unwrap();
        let other = local.create_tunnel("agt-2").await.unwrap();
        assert_eq!(
            local
                .route(&other.id, "agt-1.example.test", "http://localhost:8080")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::Conflict
        );
        local
            .delete_tunnel(&tunnel.id, "agt-1.example.test")
            .await
            .unwrap();
        assert_eq!(local.find_tunnel("agt-1").await.unwrap(), None);
        assert_eq!(
            local
                .delete_tunnel(&tunnel.id, "agt-1.example.test")
                .await
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
    }
}
