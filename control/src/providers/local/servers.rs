//! The local provider's servers: creating a VM (what cloud-init delivers, then its record,
//! then, for an Agent's, its vm-agent), powering it on and off, and deleting it, each under
//! the VM's lock. A Plain VM's is a record and its `user-data`: powering it is flipping its
//! record, and nothing is ever started for it.

use std::os::unix::fs::DirBuilderExt;
use std::time::Duration;

use async_trait::async_trait;
use control_api::usage::ResourceKind;

use super::process::{agent_alive, remove_tree, spawn_agent, stop_agent};
use super::vm::{LocalVm, lay_out, lock_vm, read_vm, transient, write_secret, write_vm};
use super::{AGENT_STOP_GRACE, Backing, LocalProvider, matches, qemu};
use crate::cloud_init::{self, AgentFirstBoot, PlainVmDelivery};
use crate::providers::{Labels, Page, ProviderError, Server, ServerSpec, Servers, labelled_kind};
use crate::sync;

/// Where a Plain VM's document lands in its directory, as in a `NoCloud` seed.
pub(super) const USER_DATA: &str = "user-data";

/// What a change of a VM that does not exist answers.
fn no_vm(id: &str) -> ProviderError {
    ProviderError::not_found(format!("VM {id}"))
}

/// The VM id for a server spec: the id label of the resource it is made for.
fn vm_id(spec: &ServerSpec) -> Result<&str, ProviderError> {
    spec.labels
        .get(crate::providers::ID_LABEL)
        .map(String::as_str)
        .ok_or_else(|| {
            ProviderError::permanent(
                "a local VM is named by its control/id label, which is missing",
            )
            .with_code("invalid_input")
        })
}

/// What a new VM's first boot reads from its user data: an Agent's document, or a Plain VM's
/// (by the kind its labels name).
enum FirstBoot {
    Agent(AgentFirstBoot),
    Plain(PlainVmDelivery),
}

fn refused(message: impl Into<String>) -> ProviderError {
    ProviderError::permanent(message).with_code("invalid_input")
}

/// Reads the document `spec` delivers, as its VM would; a document of the other kind than
/// the VM's, or none, is refused.
fn first_boot(spec: &ServerSpec) -> Result<FirstBoot, ProviderError> {
    let plain = labelled_kind(&spec.labels) == Some(ResourceKind::PlainVm);
    let Some(user_data) = spec.user_data.as_ref() else {
        return Err(refused(if plain {
            "a local Plain VM needs its cloud-init document"
        } else {
            "a local VM boots an Agent and needs its cloud-init document"
        }));
    };
    if plain {
        if cloud_init::read_agent_document(user_data).is_ok() {
            return Err(refused(
                "user data: an Agent's cloud-init document, for a Plain VM, which runs no \
                 agent of ours",
            ));
        }
        cloud_init::read_plain_vm_document(user_data)
            .map(FirstBoot::Plain)
            .map_err(|e| refused(format!("user data: not a Plain VM's document: {e}")))
    } else {
        if cloud_init::read_plain_vm_document(user_data).is_ok() {
            return Err(refused(
                "user data: a Plain VM's cloud-init document, for an Agent's VM",
            ));
        }
        cloud_init::read_agent_document(user_data)
            .map(FirstBoot::Agent)
            .map_err(|e| refused(format!("user data: {e}")))
    }
}

#[async_trait]
impl Servers for LocalProvider {
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        let id = vm_id(spec)?;
        let first_boot = first_boot(spec)?;
        let name_taken = || {
            ProviderError::conflict(format!("a local VM {id} exists already"))
                .with_code("uniqueness_error")
        };
        self.attach(id, &spec.firewall_ids, &spec.volume_ids)
            .await?;
        match &self.backing {
            Backing::Memory(vms) => {
                let mut vms = sync::lock(vms);
                if vms.contains_key(id) {
                    return Err(name_taken());
                }
                let mut vm = LocalVm::booted(id, spec);
                vm.slice_from = self.take_seed_record(id);
                match first_boot {
                    FirstBoot::Agent(agent) => vm.bootstrap_token = Some(agent.bootstrap_token.0),
                    FirstBoot::Plain(delivery) => vm.delivery = Some(delivery),
                }
                let server = vm.server();
                vms.insert(id.to_owned(), vm);
                Ok(server)
            }
            Backing::Processes { dir, config } => {
                let vm_dir = Self::vm_dir(dir, id)?;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&vm_dir)
                    .map_err(|e| transient("creating", &vm_dir, e))?;
                let _lock = lock_vm(&vm_dir).await?;
                if read_vm(&vm_dir).is_ok() {
                    return Err(name_taken());
                }
                // Read above: there is a document, of the VM's kind.
                let document = spec
                    .user_data
                    .as_ref()
                    .ok_or_else(|| refused("no cloud-init document"))?;
                let first_boot = match first_boot {
                    FirstBoot::Agent(agent) => agent,
                    FirstBoot::Plain(_) => {
                        // The seed a real one boots from, then its record; nothing to start.
                        write_secret(&vm_dir.join(USER_DATA), &document.0)?;
                        write_secret(&vm_dir.join("meta-data"), &format!("instance-id: {id}\n"))?;
                        let vm = LocalVm::booted(id, spec);
                        write_vm(&vm_dir, &vm)?;
                        return Ok(vm.server());
                    }
                };
                if let Some(machine) = &config.qemu {
                    return create_machine(dir, &vm_dir, id, spec, &first_boot, config, machine);
                }
                // Cloud-init's delivery, then the record (the intent) before any process.
                lay_out(&vm_dir, document, config)?;
                // A clone's slice: the copy made for it, before its agent first runs.
                let seeded = super::slices::adopt_seed(dir, id, &vm_dir)?;
                let mut vm = LocalVm::booted(id, spec);
                vm.slice_from = seeded;
                write_vm(&vm_dir, &vm)?;
                crate::failpoint::hit("local-vm-recorded");
                spawn_agent(&vm_dir, config, &mut vm)?;
                crate::failpoint::hit("local-agent-spawned");
                write_vm(&vm_dir, &vm)?;
                Ok(vm.server())
            }
        }
    }

    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        Ok(match &self.backing {
            Backing::Memory(vms) => sync::lock(vms).get(id).map(LocalVm::server),
            Backing::Processes { dir, .. } => Self::vm_dir(dir, id)
                .ok()
                .and_then(|vm_dir| read_vm(&vm_dir).ok())
                .map(|vm| vm.server()),
        })
    }

    async fn list_servers(
        &self,
        selector: &Labels,
        _page: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        let mut items: Vec<Server> = self
            .each_vm()
            .iter()
            .map(LocalVm::server)
            .filter(|server| matches(&server.labels, selector))
            .collect();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Page { items, next: None })
    }

    async fn power_on(&self, id: &str) -> Result<(), ProviderError> {
        let gone = || no_vm(id);
        match &self.backing {
            Backing::Memory(vms) => {
                let mut vms = sync::lock(vms);
                let vm = vms.get_mut(id).ok_or_else(gone)?;
                if !vm.running {
                    vm.running = true;
                    vm.boots += 1;
                }
            }
            Backing::Processes { dir, config } => {
                let vm_dir = Self::vm_dir(dir, id)?;
                let _lock = lock_vm(&vm_dir).await?;
                let mut vm = read_vm(&vm_dir).map_err(|_| gone())?;
                if !vm.running {
                    vm.running = true;
                    vm.boots += 1;
                    // On before its agent starts: the record says what is meant to run.
                    write_vm(&vm_dir, &vm)?;
                }
                if vm.plain {
                    return Ok(()); // on is all there is to it
                }
                if !agent_alive(&vm) {
                    spawn_agent(&vm_dir, config, &mut vm)?;
                }
                write_vm(&vm_dir, &vm)?;
            }
        }
        Ok(())
    }

    async fn shutdown(&self, id: &str) -> Result<(), ProviderError> {
        let grace = match &self.backing {
            Backing::Processes {
                config:
                    super::LocalVmConfig {
                        qemu: Some(machine),
                        ..
                    },
                ..
            } => machine.shutdown_grace,
            _ => AGENT_STOP_GRACE,
        };
        self.power_down(id, grace).await
    }

    async fn power_off(&self, id: &str) -> Result<(), ProviderError> {
        self.power_down(id, Duration::ZERO).await
    }

    async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        let gone = || no_vm(id);
        match &self.backing {
            Backing::Memory(vms) => {
                let found = sync::lock(vms).remove(id).is_some();
                self.detach_firewalls(id).await?;
                if !found {
                    return Err(gone());
                }
            }
            Backing::Processes { dir, .. } => {
                let vm_dir = Self::vm_dir(dir, id)?;
                // Dot names are skipped by every supervisor.
                let trash = dir.join(format!(".destroyed-{id}"));
                let found = match lock_vm(&vm_dir).await {
                    Ok(held) => {
                        if let Ok(mut vm) = read_vm(&vm_dir) {
                            vm.running = false;
                            write_vm(&vm_dir, &vm)?;
                            if !vm.plain {
                                // A cloud deletes a VM without shutting its OS down.
                                let grace = if vm.qemu {
                                    Duration::ZERO
                                } else {
                                    AGENT_STOP_GRACE
                                };
                                stop_agent(&vm_dir, &mut vm, grace).await;
                            }
                        }
                        // Out of every replica's sight at once, still under the lock (a
                        // directory being deleted file by file would be half a VM).
                        remove_tree(trash.clone()).await?;
                        std::fs::rename(&vm_dir, &trash)
                            .map_err(|e| transient("removing", &vm_dir, e))?;
                        drop(held);
                        true
                    }
                    Err(e) if e.kind == crate::providers::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                };
                // Gone already, perhaps half-way: finish the deletion all the same, and let
                // go of its firewalls as a cloud does once a deletion has ended.
                remove_tree(trash).await?;
                self.detach_firewalls(id).await?;
                if !found {
                    return Err(gone());
                }
            }
        }
        Ok(())
    }
}

/// `qemu` mode: a real VM from the release `spec` names, booting the very document control
/// rendered from a `NoCloud` seed. Under the VM's lock.
fn create_machine(
    dir: &std::path::Path,
    vm_dir: &std::path::Path,
    id: &str,
    spec: &ServerSpec,
    first_boot: &AgentFirstBoot,
    config: &super::LocalVmConfig,
    machine: &qemu::QemuConfig,
) -> Result<Server, ProviderError> {
    if first_boot.control_url != qemu::GUEST_CONTROL {
        return Err(refused(format!(
            "user data: a qemu VM reaches control at {}, not {} (leave [agents] control_url unset)",
            qemu::GUEST_CONTROL,
            first_boot.control_url
        )));
    }
    let release = qemu::Release::find(machine, &spec.image)?;
    let document = spec
        .user_data
        .as_ref()
        .ok_or_else(|| refused("no user data"))?;
    // A clone's slice disk: the copy made for it (else `prepare` makes an empty one).
    let seeded = super::slices::adopt_seed_as(dir, id, &vm_dir.join(qemu::SLICE_DISK))?;
    qemu::prepare(vm_dir, id, document, &release, machine)?;
    let mut vm = LocalVm::booted(id, spec);
    vm.qemu = true;
    vm.slice_from = seeded;
    write_vm(vm_dir, &vm)?;
    crate::failpoint::hit("local-vm-recorded");
    spawn_agent(vm_dir, config, &mut vm)?;
    write_vm(vm_dir, &vm)?;
    Ok(vm.server())
}

impl LocalProvider {
    /// Powers a VM off: its agent gets `grace` to stop (an ACPI shutdown), then SIGKILL. A
    /// Plain VM's is off at once.
    async fn power_down(&self, id: &str, grace: Duration) -> Result<(), ProviderError> {
        let gone = || no_vm(id);
        match &self.backing {
            Backing::Memory(vms) => {
                sync::lock(vms).get_mut(id).ok_or_else(gone)?.running = false;
            }
            Backing::Processes { dir, .. } => {
                let vm_dir = Self::vm_dir(dir, id)?;
                let _lock = lock_vm(&vm_dir).await?;
                let mut vm = read_vm(&vm_dir).map_err(|_| gone())?;
                // Off first, so no supervisor starts the agent again while it stops.
                vm.running = false;
                write_vm(&vm_dir, &vm)?;
                if vm.plain {
                    return Ok(()); // nothing runs to stop: off at once
                }
                stop_agent(&vm_dir, &mut vm, grace).await;
                write_vm(&vm_dir, &vm)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod plain_vm_tests;

#[cfg(test)]
pub(super) mod tests {
    use super::super::process::{
        ensure_agent, find_agent, host_boot, kill_leftovers, process_started,
    };
    use super::super::vm::{VmLock, try_lock_vm};
    use super::super::*;
    use super::*;
    use crate::cloud_init::AgentIdentity;
    use crate::providers::Secret;
    use crate::providers::{ErrorKind, ServerStatus, resource_labels};
    use control_api::usage::ResourceKind;

    pub(in crate::providers::local) fn spec() -> ServerSpec {
        let identity = AgentIdentity {
            agent_id: "agt_1".to_owned(),
            image_version: "2026.11.0".to_owned(),
        };
        ServerSpec {
            name: "agt-1".to_owned(),
            image: "local-2026.11.0".to_owned(),
            server_type: None,
            location: None,
            labels: resource_labels(ResourceKind::Agent, "agt_1"),
            user_data: Some(
                cloud_init::agent_document(&cloud_init::AgentFirstBoot {
                    identity,
                    control_url: "http://127.0.0.1:9".to_owned(),
                    bootstrap_token: Secret("agb_token".to_owned()),
                    tunnel_token: None,
                    clone_from: None,
                })
                .unwrap(),
            ),
            firewall_ids: Vec::new(),
            volume_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn in_memory_vms_boot_their_pinned_image_only() {
        let provider = LocalProvider::in_memory();
        let id = provider.create_server(&spec()).await.unwrap().id;
        let again = provider.create_server(&spec()).await.unwrap_err();
        assert_eq!(
            again.kind,
            ErrorKind::Conflict,
            "a second create is refused"
        );
        let found = provider
            .list_servers(&resource_labels(ResourceKind::Agent, "agt_1"), None)
            .await
            .unwrap();
        assert_eq!(found.items.len(), 1, "and the first is found by its labels");
        assert_eq!(
            provider.vm(&id).unwrap().bootstrap_token.as_deref(),
            Some("agb_token")
        );
        provider.shutdown(&id).await.unwrap();
        assert_eq!(
            provider.get_server(&id).await.unwrap().unwrap().status,
            ServerStatus::Off
        );
        provider.power_on(&id).await.unwrap();
        let vm = provider.vm(&id).unwrap();
        // Powering on takes no image: a VM only ever boots the image it was created from.
        assert_eq!(
            (vm.running, vm.image_ref.as_str(), vm.boots),
            (true, "local-2026.11.0", 2)
        );
        provider.delete_server(&id).await.unwrap();
        assert_eq!(
            provider.delete_server(&id).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(provider.get_server(&id).await.unwrap(), None);
    }

    /// Control killed between starting a VM's vm-agent and recording it: the retry adopts the
    /// running agent instead of starting a second one, and a stop ends the one that runs.
    #[tokio::test]
    async fn an_agent_started_but_not_recorded_is_adopted_not_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("fake-vm-agent");
        // Not `sleep` as the last command: sh would exec it, and the process would lose the
        // command line that names the VM.
        std::fs::write(&program, "#!/bin/sh\nsleep 60\nexit 0\n").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&program).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let config = LocalVmConfig {
            vm_agent: program,
            cloudflared: "/bin/true".into(),
            control_urls: vec!["http://127.0.0.1:9".to_owned()],
            control_ca_file: None,
            heartbeat_interval: Duration::from_secs(30),
            qemu: None,
        };
        let vms = dir.path().join("vms");
        let provider = LocalProvider::with_processes(&vms, config.clone()).unwrap();
        let id = provider.create_server(&spec()).await.unwrap().id;
        let vm_dir = vms.join(&id);
        // A process whose exec is still finishing has no command line yet: look a while.
        let mut first = None;
        for _ in 0..200 {
            first = find_agent(&vm_dir);
            if first.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = first.expect("create started the agent");
        // The crash window: the record forgets the process it started.
        let mut vm = vm::read_vm(&vm_dir).unwrap();
        vm.clear_process();
        vm::write_vm(&vm_dir, &vm).unwrap();
        // The retry and the supervisor both adopt it.
        provider.power_on(&id).await.unwrap();
        assert!(!ensure_agent(&vm_dir, &config).unwrap());
        assert_eq!(provider.vm(&id).unwrap().pid, Some(first));
        let agents: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                    String::from_utf8_lossy(&cmd)
                        .contains(&*super::super::vm::agent_config(&vm_dir).to_string_lossy())
                })
            })
            .collect();
        assert_eq!(agents, vec![first], "exactly one vm-agent for the VM");
        // Forgotten again, a stop still ends the one that runs.
        let mut vm = vm::read_vm(&vm_dir).unwrap();
        vm.clear_process();
        vm::write_vm(&vm_dir, &vm).unwrap();
        provider.power_off(&id).await.unwrap();
        assert_eq!(
            find_agent(&vm_dir),
            None,
            "the unrecorded agent was stopped"
        );
        provider.delete_server(&id).await.unwrap();
    }

    fn fake_vm_agent(dir: &std::path::Path) -> std::path::PathBuf {
        let program = dir.join("fake-vm-agent");
        // Not `sleep` as the last command: sh would exec it, and the process would lose the
        // command line that names the VM.
        std::fs::write(&program, "#!/bin/sh\nsleep 60\nexit 0\n").unwrap();
        std::fs::set_permissions(
            &program,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        program
    }

    /// A VM's directory holds its document's files exactly as delivered, under its root, and
    /// the machine's own layer beside them, which points vm-agent at those files there and
    /// leaves who the Agent is to the document.
    #[test]
    fn a_vm_is_laid_out_from_its_document_and_a_machine_layer() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut config = LocalVmConfig {
            vm_agent: "/bin/true".into(),
            cloudflared: "/bin/true".into(),
            control_urls: vec!["http://127.0.0.1:9".to_owned()],
            control_ca_file: None,
            heartbeat_interval: Duration::from_secs(3),
            qemu: None,
        };
        let first_boot = crate::cloud_init::AgentFirstBoot {
            identity: AgentIdentity {
                agent_id: "agt_1".to_owned(),
                image_version: "2026.11.0".to_owned(),
            },
            control_url: "http://127.0.0.1:9".to_owned(),
            bootstrap_token: Secret("agb_token".to_owned()),
            tunnel_token: Some(Secret("tunnel-token-of-agt-1".to_owned())),
            clone_from: None,
        };
        let document = cloud_init::agent_document(&first_boot).unwrap();
        let vm_dir = dir.path().join("agt_1");
        super::super::vm::lay_out(&vm_dir, &document, &config).unwrap();
        let root = vm_dir.join("root");
        for (path, content) in cloud_init::written_files(&document).unwrap() {
            let at = root.join(path.trim_start_matches('/'));
            assert_eq!(std::fs::read(&at).unwrap(), content.as_bytes(), "{path}");
            let mode = std::fs::metadata(&at).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o600, "{path}");
        }
        assert!(
            !vm_dir.join("agent.toml").exists(),
            "nothing rewrites the delivered file"
        );
        assert_eq!(
            super::super::vm::agent_config(&vm_dir),
            root.join("etc/vm-agent/agent.toml")
        );
        let layer_path = root.join("etc/vm-agent/agent.d/10-local.toml");
        let layer: control_api::agent_config::AgentToml = toml::from_str(&format!(
            "agent_id = \"\"\nimage_version = \"\"\ncontrol_url = \"\"\n{}",
            std::fs::read_to_string(&layer_path).unwrap()
        ))
        .expect("the layer names no identity and only keys vm-agent knows");
        assert_eq!(
            layer.bootstrap_token_file,
            Some(root.join("etc/vm-agent/bootstrap-token"))
        );
        assert_eq!(
            layer.cloudflared.token_file,
            Some(root.join("etc/vm-agent/tunnel-token"))
        );
        assert_eq!(
            layer.allow_insecure_control, None,
            "the delivered one stands"
        );
        assert_eq!(layer.slice.path, Some(vm_dir.join("data/home-coder")));
        assert_eq!(layer.cloudflared.binary, Some("/bin/true".into()));
        assert_eq!(
            (layer.heartbeat.interval_s, layer.heartbeat.backoff_max_s),
            (Some(3), Some(30))
        );
        assert!(vm_dir.join("data/home-coder").is_dir());

        // Told to reach control elsewhere (a replica of its own), the layer says where; and
        // without a tunnel token delivered, the stand-in gets one made up.
        config.control_urls = vec!["http://127.0.0.1:10".to_owned()];
        let other = cloud_init::agent_document(&crate::cloud_init::AgentFirstBoot {
            tunnel_token: None,
            ..first_boot
        })
        .unwrap();
        let other_dir = dir.path().join("agt_2");
        super::super::vm::lay_out(&other_dir, &other, &config).unwrap();
        let text =
            std::fs::read_to_string(other_dir.join("root/etc/vm-agent/agent.d/10-local.toml"))
                .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["control_url"].as_str(), Some("http://127.0.0.1:10"));
        assert_eq!(table["allow_insecure_control"].as_bool(), Some(true));
        assert!(!table.contains_key("agent_id") && !table.contains_key("image_version"));
        let token = std::path::PathBuf::from(table["cloudflared"]["token_file"].as_str().unwrap());
        assert_eq!(token, other_dir.join("stand-in-tunnel-token"));
        assert!(
            std::fs::read_to_string(token)
                .unwrap()
                .starts_with("local-tunnel-")
        );
        assert!(!other_dir.join("root/etc/vm-agent/tunnel-token").exists());

        // Over https to a control whose certificate comes from the operator's own CA: the
        // layer names the CA, and its URL allows no plain http whatever the document did.
        config.control_urls = vec!["https://127.0.0.1:10".to_owned()];
        config.control_ca_file = Some("/etc/control/ca.pem".into());
        let tls_dir = dir.path().join("agt_3");
        super::super::vm::lay_out(&tls_dir, &other, &config).unwrap();
        let text = std::fs::read_to_string(tls_dir.join("root/etc/vm-agent/agent.d/10-local.toml"))
            .unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["control_url"].as_str(), Some("https://127.0.0.1:10"));
        assert_eq!(table["allow_insecure_control"].as_bool(), Some(false));
        assert_eq!(
            table["control_ca_file"].as_str(),
            Some("/etc/control/ca.pem")
        );
    }

    /// A VM an earlier release laid out (its own `agent.toml` and tokens at the top of the
    /// directory) still has its agent started, with that file, after an upgrade.
    #[tokio::test]
    async fn a_vm_of_the_earlier_layout_is_still_started() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalVmConfig {
            vm_agent: fake_vm_agent(dir.path()),
            cloudflared: "/bin/true".into(),
            control_urls: vec!["http://127.0.0.1:9".to_owned()],
            control_ca_file: None,
            heartbeat_interval: Duration::from_secs(30),
            qemu: None,
        };
        let vms = dir.path().join("vms");
        let vm_dir = vms.join("agt_old");
        std::fs::create_dir_all(&vm_dir).unwrap();
        for (name, text) in [
            ("agent.toml", "agent_id = \"agt_old\"\n"),
            ("bootstrap-token", "agb_old"),
            ("tunnel-token", "tunnel-old"),
            (
                "vm.json",
                r#"{"agent_id": "agt_old", "name": "agt-old", "image_ref": "local-1",
                    "env": {}, "running": true, "boots": 1}"#,
            ),
        ] {
            std::fs::write(vm_dir.join(name), text).unwrap();
        }
        let provider = LocalProvider::with_processes(&vms, config.clone()).unwrap();
        assert_eq!(
            super::super::vm::agent_config(&vm_dir),
            vm_dir.join("agent.toml")
        );
        assert!(ensure_agent(&vm_dir, &config).unwrap(), "started");
        let mut found = None;
        for _ in 0..200 {
            found = find_agent(&vm_dir);
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = found.expect("started with the earlier release's agent.toml");
        assert_eq!(provider.vm("agt_old").unwrap().pid, Some(pid));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).ends_with(&format!(
                "run\0--config\0{}\0",
                vm_dir.join("agent.toml").display()
            )),
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
        assert!(!vm_dir.join("root").exists(), "nothing laid out anew");
        provider.power_off("agt_old").await.unwrap();
        assert_eq!(find_agent(&vm_dir), None);
    }

    /// Two changes of one VM on a single runtime thread: the second waits for the first,
    /// which holds the lock across `.await`s, without parking the only thread. (A blocking
    /// `flock` here hung both replicas of the end-to-end test.)
    #[test]
    fn waiting_for_a_vm_lock_leaves_the_runtime_running() {
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path().to_owned();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let first = lock_vm(&vm_dir).await.unwrap();
                assert!(
                    matches!(try_lock_vm(&vm_dir).unwrap(), VmLock::Busy),
                    "held means held, within one process too"
                );
                let second = tokio::spawn({
                    let vm_dir = vm_dir.clone();
                    async move { lock_vm(&vm_dir).await.map(drop) }
                });
                tokio::time::sleep(Duration::from_millis(100)).await; // the holder's own await
                assert!(!second.is_finished());
                drop(first);
                second.await.unwrap().unwrap();
            });
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the runtime thread was parked waiting for the lock");
    }

    /// A recorded agent whose PID now belongs to another process: that process's group is
    /// not ours to kill.
    #[test]
    fn leftovers_are_killed_only_in_the_agents_own_group() {
        let mut other = std::process::Command::new("sleep");
        other.arg("30");
        std::os::unix::process::CommandExt::process_group(&mut other, 0);
        let mut other = other.spawn().unwrap();
        let pid = other.id();
        let mut vm = LocalVm::booted("agt_1", &spec());
        vm.pid = Some(pid);
        vm.pid_started = process_started(pid).map(|started| started + 1); // a reused PID
        vm.host_boot = host_boot();
        assert!(!agent_alive(&vm));
        kill_leftovers(&vm);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            other.try_wait().unwrap().is_none(),
            "another process's group was killed"
        );
        // Once that PID is free (the agent gone), its group is the agent's leftovers.
        let _ = other.kill();
        let _ = other.wait();
    }

    #[tokio::test]
    async fn a_destroyed_vm_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("agt_gone");
        assert!(matches!(try_lock_vm(&gone).unwrap(), VmLock::Gone));
        assert!(
            matches!(lock_vm(&gone).await, Err(e) if e.kind == ErrorKind::NotFound && e.message.contains("agt_gone"))
        );
    }

    #[test]
    fn process_start_times_tell_processes_apart() {
        let own = process_started(std::process::id()).unwrap();
        assert!(own > 0);
        assert_eq!(process_started(u32::MAX), None);
    }
}
