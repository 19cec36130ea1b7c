//! Hetzner Volumes behind [`Volumes`]: an Agent's slice, formatted at creation and attached
//! when its server is created.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::wire;
use super::{Hetzner, list_query, numeric, page};
use crate::providers::{ErrorKind, Labels, Page, ProviderError, Volume, VolumeSpec, Volumes};

fn volume(found: wire::Volume) -> Volume {
    Volume {
        id: found.id.to_string(),
        name: found.name,
        size_gb: found
            .size
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default(),
        labels: found.labels,
        server: found.server.map(|s| s.to_string()),
        device: found.linux_device,
    }
}

#[async_trait]
impl Volumes for Hetzner {
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProviderError> {
        let mut request = json!({
            "name": spec.name,
            "size": spec.size_gb,
            "location": spec.location.as_deref().unwrap_or(&self.config.location),
            "labels": spec.labels,
            "automount": false,
        });
        if let Some(format) = &spec.format {
            request["format"] = json!(format);
        }
        let created: wire::OneVolume = self.send(Method::POST, "/volumes", &request).await?;
        Ok(volume(created.volume))
    }

    async fn get_volume(&self, id: &str) -> Result<Option<Volume>, ProviderError> {
        let Ok(id) = numeric(id, "volume") else {
            return Ok(None);
        };
        let found: Option<wire::OneVolume> = self.find(&format!("/volumes/{id}")).await?;
        Ok(found.map(|f| volume(f.volume)))
    }

    async fn list_volumes(
        &self,
        selector: &Labels,
        page_token: Option<&str>,
    ) -> Result<Page<Volume>, ProviderError> {
        let found: wire::Volumes = self
            .get(&format!("/volumes?{}", list_query(selector, page_token)?))
            .await?;
        Ok(page(found.volumes, &found.meta, volume))
    }

    async fn delete_volume(&self, id: &str) -> Result<(), ProviderError> {
        let id = numeric(id, "volume")?;
        self.delete(&format!("/volumes/{id}")).await
    }

    async fn attach_volume(&self, id: &str, server_id: &str) -> Result<(), ProviderError> {
        let found = self
            .get_volume(id)
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("volume {id}")))?;
        match found.server.as_deref() {
            Some(on) if on == server_id => return Ok(()),
            Some(on) => {
                return Err(ProviderError::new(
                    ErrorKind::Conflict,
                    format!("volume {id} is attached to server {on}, not {server_id}"),
                ));
            }
            None => {}
        }
        let volume = numeric(id, "volume")?;
        let server = numeric(server_id, "server")?;
        let started: wire::OneAction = self
            .send(
                Method::POST,
                &format!("/volumes/{volume}/actions/attach"),
                &json!({"server": server, "automount": false}),
            )
            .await?;
        self.wait_actions(&[started.action.id]).await
    }

    async fn detach_volume(&self, id: &str) -> Result<(), ProviderError> {
        let found = self
            .get_volume(id)
            .await?
            .ok_or_else(|| ProviderError::not_found(format!("volume {id}")))?;
        if found.server.is_none() {
            return Ok(());
        }
        let volume = numeric(id, "volume")?;
        let started: wire::OneAction = self
            .api
            .call(
                Method::POST,
                &format!("/volumes/{volume}/actions/detach"),
                None,
            )
            .await?
            .json()?;
        self.wait_actions(&[started.action.id]).await
    }
}
