//! The local provider's volumes: records, and a directory each with the processes backing.

use async_trait::async_trait;

use super::cloud::{in_use, new_record_id, page, taken};
use super::records::Write;
use super::{LocalProvider, matches};
use crate::providers::{Labels, Page, ProviderError, Volume, VolumeSpec, Volumes};

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
                    device: None,
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

    /// Records the volume on the server: its directory is the slice of the server's VMs
    /// only when they are made (the local provider lends no volume to a running VM).
    async fn attach_volume(&self, id: &str, server_id: &str) -> Result<(), ProviderError> {
        self.change_volume(id, |volume| match volume.server.as_deref() {
            Some(on) if on == server_id => Ok(()),
            Some(on) => Err(ProviderError::new(
                crate::providers::ErrorKind::Conflict,
                format!("volume {id} is attached to server {on}"),
            )),
            None => {
                volume.server = Some(server_id.to_owned());
                Ok(())
            }
        })
        .await
    }

    async fn detach_volume(&self, id: &str) -> Result<(), ProviderError> {
        self.change_volume(id, |volume| {
            volume.server = None;
            Ok(())
        })
        .await
    }
}

impl LocalProvider {
    /// Changes the record of volume `id` as `change` says, unless it refuses.
    async fn change_volume(
        &self,
        id: &str,
        change: impl FnOnce(&mut Volume) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        self.cloud
            .volumes
            .change(|all| {
                let mut volume = all
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ProviderError::not_found(format!("volume {id}")))?;
                change(&mut volume)?;
                Ok((Write::Put(id.to_owned(), volume), ()))
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
    use crate::providers::{ErrorKind, resource_labels};

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
                qemu: None,
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
}
