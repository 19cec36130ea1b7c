//! Hetzner servers behind [`Servers`]: created from an image with user data, labels, type,
//! location, firewalls and volumes; powered on, shut down (ACPI) and off; deleted; found by
//! our labels a page at a time.

use async_trait::async_trait;
use reqwest::Method;
use tracing::debug;

use super::wire::{self, CreateServer, FirewallRef, PublicNetRequest};
use super::{Hetzner, list_query, numeric, page};
use crate::providers::{
    Labels, Page, Placement, ProviderError, Server, ServerSpec, ServerStatus, Servers,
};

/// Hetzner's status, which is ours.
fn status(text: &str) -> ServerStatus {
    match text {
        "initializing" => ServerStatus::Initializing,
        "starting" => ServerStatus::Starting,
        "running" => ServerStatus::Running,
        "stopping" => ServerStatus::Stopping,
        "off" => ServerStatus::Off,
        "deleting" => ServerStatus::Deleting,
        "migrating" => ServerStatus::Migrating,
        "rebuilding" => ServerStatus::Rebuilding,
        _ => ServerStatus::Unknown,
    }
}

fn server(found: wire::Server) -> Server {
    Server {
        id: found.id.to_string(),
        name: found.name,
        status: status(&found.status),
        image: found.image.map(|i| i.id.to_string()).unwrap_or_default(),
        labels: found.labels,
        ipv4: found.public_net.ipv4.map(|a| a.ip),
        ipv6: found.public_net.ipv6.map(|a| a.ip),
    }
}

fn ids(list: &[String], what: &str) -> Result<Vec<i64>, ProviderError> {
    list.iter()
        .map(|id| {
            numeric(id, what).map_err(|_| {
                ProviderError::permanent(format!(
                    "{what} {} is not a Hetzner id",
                    id.escape_debug()
                ))
                .with_code("invalid_input")
            })
        })
        .collect()
}

impl Hetzner {
    /// A power action on server `id`: answered with an action that runs on (not waited for).
    async fn power(&self, id: &str, action: &str) -> Result<(), ProviderError> {
        let id = numeric(id, "server")?;
        let started: wire::OneAction = self
            .send(
                Method::POST,
                &format!("/servers/{id}/actions/{action}"),
                &serde_json::json!({}),
            )
            .await?;
        debug!(
            server = id,
            action = started.action.id,
            command = %started.action.command,
            "hetzner power action started"
        );
        Ok(())
    }

    async fn status_of(&self, id: &str) -> Result<Option<ServerStatus>, ProviderError> {
        Ok(self.get_server(id).await?.map(|s| s.status))
    }
}

#[async_trait]
impl Servers for Hetzner {
    async fn preflight(&self, placement: &Placement<'_>) -> Result<(), ProviderError> {
        self.check_quota()?;
        self.check_catalogue(placement).await
    }

    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        let request = CreateServer {
            name: &spec.name,
            server_type: spec
                .server_type
                .as_deref()
                .unwrap_or(&self.config.server_type),
            image: &spec.image,
            location: Some(spec.location.as_deref().unwrap_or(&self.config.location)),
            labels: &spec.labels,
            user_data: spec.user_data.as_ref().map(|s| s.0.as_str()),
            firewalls: ids(&spec.firewall_ids, "firewall")?
                .into_iter()
                .map(|firewall| FirewallRef { firewall })
                .collect(),
            volumes: ids(&spec.volume_ids, "volume")?,
            automount: false,
            start_after_create: true,
            // Every server has both (a Plain VM is reached over them; an Agent's tunnel
            // needs one); said outright rather than left to Hetzner's defaults.
            public_net: PublicNetRequest {
                enable_ipv4: true,
                enable_ipv6: true,
            },
        };
        let created: wire::OneServer = self.send(Method::POST, "/servers", &request).await?;
        Ok(server(created.server))
    }

    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        let Ok(id) = numeric(id, "server") else {
            return Ok(None);
        };
        let found: Option<wire::OneServer> = self.find(&format!("/servers/{id}")).await?;
        Ok(found.map(|f| server(f.server)))
    }

    async fn list_servers(
        &self,
        selector: &Labels,
        page_token: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        let found: wire::Servers = self
            .get(&format!("/servers?{}", list_query(selector, page_token)?))
            .await?;
        Ok(page(found.servers, &found.meta, server))
    }

    async fn power_on(&self, id: &str) -> Result<(), ProviderError> {
        if self.status_of(id).await? == Some(ServerStatus::Running) {
            return Ok(());
        }
        self.power(id, "poweron").await
    }

    async fn shutdown(&self, id: &str) -> Result<(), ProviderError> {
        if self.status_of(id).await? == Some(ServerStatus::Off) {
            return Ok(());
        }
        self.power(id, "shutdown").await
    }

    async fn power_off(&self, id: &str) -> Result<(), ProviderError> {
        if self.status_of(id).await? == Some(ServerStatus::Off) {
            return Ok(());
        }
        self.power(id, "poweroff").await
    }

    /// Deletes the server and follows the deletion to its end: Hetzner releases the server's
    /// volumes and firewalls only then, and the steps after this one delete them.
    async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        let id = numeric(id, "server")?;
        let started: wire::OneAction = self
            .api
            .call(Method::DELETE, &format!("/servers/{id}"), None)
            .await?
            .json()?;
        self.quota_freed("/servers");
        self.wait_actions(&[started.action.id]).await
    }

    fn requests_per_hour(&self) -> Option<u32> {
        Some(Hetzner::requests_per_hour(self))
    }
}
