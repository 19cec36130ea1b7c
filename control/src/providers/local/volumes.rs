//! The local provider's volumes: records, and a directory each with the processes backing.
//! In the `qemu` mode an Agent's volume is its VM's slice disk; attaching it to another
//! running VM lends that disk to it (hot-plugged, see [`super::qemu`]), as Hetzner
//! attaches a volume to a running server, and that is where the VM finds it (`device`).

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
        Ok(self.cloud.volumes.get(id)?.map(|v| self.with_device(v)))
    }

    async fn list_volumes(
        &self,
        selector: &Labels,
        _page: Option<&str>,
    ) -> Result<Page<Volume>, ProviderError> {
        let mut found = page(self.cloud.volumes.all()?, |v| matches(&v.labels, selector));
        found.items = found
            .items
            .into_iter()
            .map(|v| self.with_device(v))
            .collect();
        Ok(found)
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

    /// Records the volume on the server; in the `qemu` mode, a running VM other than the one
    /// whose slice it is gets its disk, hot-plugged (the record first, so a retry plugs it).
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
        .await?;
        if let Some((vm_dir, disk)) = self.lent_disk(id, server_id)? {
            let volume_id = id.to_owned();
            blocking(move || super::qemu::lend_disk(&vm_dir, &disk, &volume_id)).await?;
        }
        Ok(())
    }

    /// In the `qemu` mode, a disk lent to a running VM is unplugged first (once its OS has let
    /// go of it); then the record.
    async fn detach_volume(&self, id: &str) -> Result<(), ProviderError> {
        let on = self.cloud.volumes.get(id)?.and_then(|v| v.server);
        if let Some(on) = on
            && let Some((vm_dir, _)) = self.lent_disk(id, &on)?
            && super::qemu::is_up(&vm_dir)
        {
            blocking(move || super::qemu::take_back_disk(&vm_dir)).await?;
        }
        self.change_volume(id, |volume| {
            volume.server = None;
            Ok(())
        })
        .await
    }
}

/// Runs a blocking conversation with qemu off the async workers.
async fn blocking(
    talk: impl FnOnce() -> Result<(), ProviderError> + Send + 'static,
) -> Result<(), ProviderError> {
    tokio::task::spawn_blocking(talk)
        .await
        .map_err(|e| ProviderError::transient(format!("talking to qemu: {e}")))?
}

impl LocalProvider {
    /// In the `qemu` mode: the volume with where a VM it is lent to finds it.
    fn with_device(&self, mut volume: Volume) -> Volume {
        if self.qemu_mode() {
            volume.device = Some(super::qemu::lent_device(&volume.id));
        }
        volume
    }

    /// In the `qemu` mode, when the volume `id` is the slice disk of another VM than
    /// `server_id`'s: that VM's directory and the disk lent to it. The volume's own VM is the
    /// Agent its labels name.
    fn lent_disk(
        &self,
        id: &str,
        server_id: &str,
    ) -> Result<Option<(std::path::PathBuf, std::path::PathBuf)>, ProviderError> {
        let super::Backing::Processes { dir, config } = &self.backing else {
            return Ok(None);
        };
        if config.qemu.is_none() {
            return Ok(None);
        }
        let volume = self
            .cloud
            .volumes
            .get(id)?
            .ok_or_else(|| ProviderError::not_found(format!("volume {id}")))?;
        let Some(owner) = volume.labels.get(crate::providers::ID_LABEL) else {
            return Ok(None);
        };
        if owner == server_id {
            return Ok(None);
        }
        let disk = Self::vm_dir(dir, owner)?.join(super::qemu::SLICE_DISK);
        Ok(Some((Self::vm_dir(dir, server_id)?, disk)))
    }

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
                control_ca_file: None,
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
