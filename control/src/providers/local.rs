//! The `local` provider: each Agent's "VM" is a record on this machine, so the whole system
//! runs on a laptop with no cloud account. It keeps power state and the pinned image per VM, in
//! memory or, for `control serve`, as one JSON file per VM under the data dir so a restart of
//! control finds its VMs again. (Running a real vm-agent per VM comes with the end-to-end
//! issue; until then a VM here is its record.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{PowerState, Provider, ProviderError, VmSpec};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LocalVm {
    agent_id: String,
    name: String,
    image_ref: String,
    env: BTreeMap<String, String>,
    running: bool,
    /// How many times the VM was powered on; each boot uses the pinned `image_ref`.
    boots: u64,
    /// What cloud-init would deliver: the single-use token for the VM's agent.
    #[serde(default)]
    bootstrap_token: Option<String>,
}

#[derive(Debug)]
pub struct LocalProvider {
    vms: Mutex<BTreeMap<String, LocalVm>>,
    dir: Option<PathBuf>,
}

/// What the local provider holds for one VM, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalVmView {
    pub running: bool,
    pub image_ref: String,
    pub boots: u64,
    pub bootstrap_token: Option<String>,
}

impl LocalProvider {
    /// VMs that live as long as this process.
    pub fn in_memory() -> Self {
        Self {
            vms: Mutex::new(BTreeMap::new()),
            dir: None,
        }
    }

    /// VMs recorded as files in `dir`, loaded now.
    pub fn persistent(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut vms = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)?;
                let vm: LocalVm = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                vms.insert(vm.agent_id.clone(), vm);
            }
        }
        Ok(Self {
            vms: Mutex::new(vms),
            dir: Some(dir.to_owned()),
        })
    }

    pub fn vm(&self, provider_id: &str) -> Option<LocalVmView> {
        self.lock().get(provider_id).map(|vm| LocalVmView {
            running: vm.running,
            image_ref: vm.image_ref.clone(),
            boots: vm.boots,
            bootstrap_token: vm.bootstrap_token.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalVm>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.vms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the VM's file atomically (temp file, then rename).
    fn persist(&self, vm: &LocalVm) -> Result<(), ProviderError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join(format!("{}.json", vm.agent_id));
        let temp = dir.join(format!(".{}.json.tmp", vm.agent_id));
        let text = serde_json::to_string_pretty(vm)
            .map_err(|e| ProviderError::Permanent(format!("encoding local VM record: {e}")))?;
        std::fs::write(&temp, text)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| ProviderError::Transient(format!("writing {}: {e}", path.display())))
    }

    fn forget(&self, agent_id: &str) -> Result<(), ProviderError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let path = dir.join(format!("{agent_id}.json"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProviderError::Transient(
                format!("removing {}: {e}", path.display()),
            )),
            _ => Ok(()),
        }
    }

    fn set_running(&self, provider_id: &str, running: bool) -> Result<(), ProviderError> {
        let mut vms = self.lock();
        let vm = vms
            .get_mut(provider_id)
            .ok_or_else(|| ProviderError::NotFound(provider_id.to_owned()))?;
        if vm.running != running {
            vm.running = running;
            if running {
                vm.boots += 1;
            }
            self.persist(vm)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &VmSpec) -> Result<String, ProviderError> {
        let mut vms = self.lock();
        let token = spec.bootstrap_token.as_ref().map(|t| t.0.clone());
        // The VM id is the Agent id: a retried create finds and adopts the first one, and
        // gives it the retry's bootstrap token (the earlier one was replaced).
        if let Some(vm) = vms.get_mut(&spec.agent_id) {
            vm.bootstrap_token = token;
            self.persist(vm)?;
        } else {
            let vm = LocalVm {
                agent_id: spec.agent_id.clone(),
                name: spec.name.clone(),
                image_ref: spec.image_ref.clone(),
                env: spec.env.clone(),
                running: true,
                boots: 1,
                bootstrap_token: token,
            };
            self.persist(&vm)?;
            vms.insert(spec.agent_id.clone(), vm);
        }
        Ok(spec.agent_id.clone())
    }

    async fn start(&self, provider_id: &str, spec: &VmSpec) -> Result<(), ProviderError> {
        {
            let vms = self.lock();
            let vm = vms
                .get(provider_id)
                .ok_or_else(|| ProviderError::NotFound(provider_id.to_owned()))?;
            if vm.image_ref != spec.image_ref {
                return Err(ProviderError::Permanent(format!(
                    "VM {provider_id} was created from {} but was asked to boot {}",
                    vm.image_ref, spec.image_ref
                )));
            }
        }
        self.set_running(provider_id, true)
    }

    async fn stop(&self, provider_id: &str) -> Result<(), ProviderError> {
        self.set_running(provider_id, false)
    }

    async fn destroy(
        &self,
        provider_id: Option<&str>,
        agent_id: &str,
    ) -> Result<(), ProviderError> {
        let id = provider_id.unwrap_or(agent_id);
        self.lock().remove(id);
        self.forget(id)
    }

    async fn power_state(&self, provider_id: &str) -> Result<Option<PowerState>, ProviderError> {
        Ok(self.lock().get(provider_id).map(|vm| {
            if vm.running {
                PowerState::Running
            } else {
                PowerState::Off
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            agent_id: "agt_1".to_owned(),
            name: "dev".to_owned(),
            image_ref: "local-2026.11.0".to_owned(),
            env: BTreeMap::new(),
            bootstrap_token: None,
        }
    }

    #[tokio::test]
    async fn vms_survive_a_restart_and_boot_their_pinned_image() {
        let dir = tempfile::tempdir().unwrap();
        let provider = LocalProvider::persistent(dir.path()).unwrap();
        let id = provider.create(&spec()).await.unwrap();
        assert_eq!(provider.create(&spec()).await.unwrap(), id, "create adopts");
        provider.stop(&id).await.unwrap();

        let reopened = LocalProvider::persistent(dir.path()).unwrap();
        assert_eq!(
            reopened.power_state(&id).await.unwrap(),
            Some(PowerState::Off)
        );
        reopened.start(&id, &spec()).await.unwrap();
        let vm = reopened.vm(&id).unwrap();
        assert!(vm.running);
        assert_eq!((vm.image_ref.as_str(), vm.boots), ("local-2026.11.0", 2));

        let newer = VmSpec {
            image_ref: "local-2026.12.0".to_owned(),
            ..spec()
        };
        assert!(
            matches!(
                reopened.start(&id, &newer).await,
                Err(ProviderError::Permanent(_))
            ),
            "a VM only ever boots the image it was created from"
        );
        reopened.start(&id, &spec()).await.unwrap();
        assert_eq!(
            reopened.vm(&id).unwrap().boots,
            2,
            "starting a running VM boots nothing"
        );
        reopened.destroy(Some(&id), "agt_1").await.unwrap();
        reopened.destroy(Some(&id), "agt_1").await.unwrap();
        assert_eq!(reopened.power_state(&id).await.unwrap(), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
