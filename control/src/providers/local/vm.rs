//! A local VM's record (`vm.json`), its lock file, and its directory: for an Agent's VM, what
//! its cloud-init document delivers, written verbatim under `root/` (its `/`), plus the
//! machine's own drop-in for vm-agent; for a Plain VM, its `user-data`, as a `NoCloud` seed.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use control_api::agent_config::{AgentToml, CloudflaredToml, HeartbeatToml, SliceToml};
use control_api::usage::ResourceKind;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::process::host_boot;
use super::{LOCK_RETRY, LocalVmConfig};
use crate::cloud_init::{self, AGENT_TOML_PATH, CloudInitError, PlainVmDelivery};
use crate::providers::{
    Labels, ProviderError, Secret, Server, ServerSpec, ServerStatus, labelled_kind, resource_labels,
};

/// A VM as recorded in memory or in its `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LocalVm {
    /// The VM's id (an Agent's VM is named after the Agent); the key is named for the
    /// `vm.json` of earlier releases.
    pub(super) agent_id: String,
    pub(super) name: String,
    pub(super) image_ref: String,
    /// Written by earlier releases; the image version now comes with the VM's identity.
    #[serde(default, skip_serializing)]
    env: BTreeMap<String, String>,
    /// Powered on.
    pub(super) running: bool,
    /// How many times the VM was powered on; each boot uses the pinned `image_ref`.
    pub(super) boots: u64,
    /// In memory only: what cloud-init would deliver (a file in the VM's directory otherwise).
    #[serde(default, skip_serializing)]
    pub(super) bootstrap_token: Option<String>,
    /// The agent process, with its start time (clock ticks since boot) against PID reuse.
    #[serde(default)]
    pub(super) pid: Option<u32>,
    #[serde(default)]
    pub(super) pid_started: Option<u64>,
    /// The host's boot the agent process was started in: PIDs and start times mean nothing
    /// across a reboot.
    #[serde(default)]
    pub(super) host_boot: Option<String>,
    /// The provider labels it was created with (an earlier release's VM: its Agent's).
    #[serde(default)]
    labels: Labels,
    /// A Plain VM's: it runs nothing of ours, so no process is ever started for it (an
    /// earlier release's `vm.json` has no such key, and is an Agent's).
    #[serde(default)]
    pub(super) plain: bool,
    /// In memory only: what a Plain VM's document delivered (its `user-data` file otherwise).
    #[serde(skip)]
    pub(super) delivery: Option<PlainVmDelivery>,
    /// A real VM run by qemu (`qemu` mode), whose process is qemu rather than vm-agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) qemu: bool,
    /// A clone's: the VM its slice was copied from.
    #[serde(default)]
    pub(super) slice_from: Option<String>,
}

impl LocalVm {
    /// A VM just created from `spec` as `id` and powered on for its first boot.
    pub(super) fn booted(id: &str, spec: &ServerSpec) -> Self {
        Self {
            agent_id: id.to_owned(),
            name: spec.name.clone(),
            image_ref: spec.image.clone(),
            env: BTreeMap::new(),
            running: true,
            boots: 1,
            bootstrap_token: None,
            pid: None,
            pid_started: None,
            host_boot: None,
            labels: spec.labels.clone(),
            plain: labelled_kind(&spec.labels) == Some(ResourceKind::PlainVm),
            delivery: None,
            qemu: false,
            slice_from: None,
        }
    }

    pub(super) fn labels(&self) -> Labels {
        if self.labels.is_empty() {
            resource_labels(ResourceKind::Agent, &self.agent_id)
        } else {
            self.labels.clone()
        }
    }

    /// The VM as the provider reports it: powered on is running, whatever its agent is doing
    /// (a real VM is billed either way). A Plain VM has public addresses, simulated ones.
    pub(super) fn server(&self) -> Server {
        let (ipv4, ipv6) = if self.plain {
            let (v4, v6) = documentation_addresses(&self.agent_id);
            (Some(v4), Some(v6))
        } else {
            (None, None)
        };
        Server {
            id: self.agent_id.clone(),
            name: self.name.clone(),
            status: if self.running {
                ServerStatus::Running
            } else {
                ServerStatus::Off
            },
            image: self.image_ref.clone(),
            labels: self.labels(),
            ipv4,
            ipv6,
        }
    }

    /// Forgets the agent process (it is gone).
    pub(super) fn clear_process(&mut self) {
        self.pid = None;
        self.pid_started = None;
        self.host_boot = None;
    }

    /// The recorded agent process, if it was started in this boot of the host.
    pub(super) fn process_this_boot(&self) -> Option<(u32, u64)> {
        let this_boot = host_boot();
        match (self.pid, self.pid_started) {
            (Some(pid), Some(started))
                if self.host_boot.is_none() || self.host_boot == this_boot =>
            {
                Some((pid, started))
            }
            _ => None,
        }
    }
}

/// A simulated Plain VM's public addresses, the same for VM `id` every time: an address of
/// RFC 5737's `192.0.2.0/24` and a /64 of RFC 3849's `2001:db8::/32` (Hetzner reports a server's
/// `IPv6` as its /64). Both ranges are for documentation only, so no one takes them for real
/// ones and nothing can reach them; two VMs may share an address.
pub(super) fn documentation_addresses(id: &str) -> (String, String) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    // Neither the network's .0 nor its broadcast .255.
    let host = 1 + digest[0] % 254;
    let network = std::net::Ipv6Addr::new(
        0x2001,
        0x0db8,
        u16::from_be_bytes([digest[1], digest[2]]),
        u16::from_be_bytes([digest[3], digest[4]]),
        0,
        0,
        0,
        0,
    );
    (format!("192.0.2.{host}"), format!("{network}/64"))
}

pub(super) fn transient(what: &str, path: &Path, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::transient(format!("{what} {}: {e}", path.display()))
}

pub(super) fn read_vm(vm_dir: &Path) -> std::io::Result<LocalVm> {
    let text = std::fs::read_to_string(vm_dir.join("vm.json"))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `vm.json` atomically (temp file, then rename).
pub(super) fn write_vm(vm_dir: &Path, vm: &LocalVm) -> Result<(), ProviderError> {
    let path = vm_dir.join("vm.json");
    let temp = vm_dir.join(".vm.json.tmp");
    let text = serde_json::to_string_pretty(vm).map_err(|e| transient("encoding", &path, e))?;
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| transient("writing", &path, e))
}

/// What one try for a VM's lock found.
pub(super) enum VmLock {
    Held(Flock<std::fs::File>),
    /// Another change (in this replica or another) holds it.
    Busy,
    /// The VM's directory is gone (destroyed).
    Gone,
}

/// Tries the VM's lock file once.
pub(super) fn try_lock_vm(vm_dir: &Path) -> Result<VmLock, ProviderError> {
    let path = vm_dir.join(".lock");
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VmLock::Gone),
        Err(e) => return Err(transient("opening", &path, e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => Ok(VmLock::Held(held)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(VmLock::Busy),
        Err((_, e)) => Err(transient("locking", &path, e)),
    }
}

/// Holds the VM's lock file for the duration of one change, across replicas. Waits without
/// blocking a runtime thread: a change holds the lock across `.await`s (a graceful stop takes
/// seconds), and a thread parked in `flock` could be the one that change needs to finish.
/// A VM destroyed meanwhile is `NotFound`.
pub(super) async fn lock_vm(vm_dir: &Path) -> Result<Flock<std::fs::File>, ProviderError> {
    loop {
        match try_lock_vm(vm_dir)? {
            VmLock::Held(held) => return Ok(held),
            VmLock::Busy => tokio::time::sleep(LOCK_RETRY).await,
            VmLock::Gone => {
                let id = vm_dir.file_name().unwrap_or_default().to_string_lossy();
                return Err(ProviderError::not_found(format!("VM {id}")));
            }
        }
    }
}

pub(super) fn free_port() -> Result<u16, ProviderError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| {
            ProviderError::transient(format!("no free port for cloudflared's metrics: {e}"))
        })
}

pub(super) fn write_secret(path: &Path, text: &str) -> Result<(), ProviderError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| transient("writing", path, e))
}

/// Where a VM's own `/` is, under its directory: what its cloud-init document delivers lands
/// here, at the paths the document names.
const ROOT: &str = "root";
/// The machine's layer of vm-agent's configuration, a drop-in beside the delivered
/// `agent.toml` (where the image bakes `10-image.toml` on a real VM).
const LOCAL_LAYER: &str = "etc/vm-agent/agent.d/10-local.toml";

/// `vm_path`, a path on the VM, as a path under the VM's directory.
fn rooted(vm_dir: &Path, vm_path: &Path) -> PathBuf {
    vm_dir
        .join(ROOT)
        .join(vm_path.strip_prefix("/").unwrap_or(vm_path))
}

/// The `agent.toml` the VM's vm-agent runs with: the one its document delivered, or, in a VM
/// laid out by an earlier release (which wrote its own file at the top of the directory), that
/// one, so such a VM is still started and adopted after an upgrade.
pub(super) fn agent_config(vm_dir: &Path) -> PathBuf {
    let earlier = vm_dir.join("agent.toml");
    if earlier.exists() {
        earlier
    } else {
        rooted(vm_dir, Path::new(AGENT_TOML_PATH))
    }
}

/// Lays out a new Agent VM's directory: cloud-init's delivery of `document` under its root,
/// verbatim, then what the image would provide on a real VM (its slice and mount table, the
/// stand-in cloudflared, where the agent keeps its state) as the machine's own drop-in.
pub(super) fn lay_out(
    vm_dir: &Path,
    document: &Secret,
    config: &LocalVmConfig,
) -> Result<(), ProviderError> {
    let slice = vm_dir.join("data/home-coder");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&slice)
        .map_err(|e| transient("creating", &slice, e))?;
    // The VM's mount table: its root and its persistent slice.
    std::fs::write(
        vm_dir.join("mountinfo"),
        format!(
            "22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n61 22 0:52 / {} rw,relatime shared:30 - ext4 /dev/sdb rw\n",
            slice.display()
        ),
    )
    .map_err(|e| transient("writing the mount table of", vm_dir, e))?;
    cloud_init::deliver(document, &vm_dir.join(ROOT)).map_err(|e| match e {
        CloudInitError::Deliver { .. } => transient("delivering the user data of", vm_dir, e),
        other => ProviderError::permanent(format!("user data: {other}")),
    })?;
    let delivered_path = rooted(vm_dir, Path::new(AGENT_TOML_PATH));
    let delivered: AgentToml = std::fs::read_to_string(&delivered_path)
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str(&text).map_err(|e| e.to_string()))
        .map_err(|e| {
            ProviderError::permanent(format!(
                "user data: the delivered {AGENT_TOML_PATH} cannot be read: {e}"
            ))
        })?;
    let layer = local_layer(vm_dir, &delivered, &slice, config)?;
    let path = vm_dir.join(ROOT).join(LOCAL_LAYER);
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| transient("creating", parent, e))?;
    }
    let text = toml::to_string(&layer).map_err(|e| transient("writing", &path, e))?;
    write_secret(
        &path,
        &format!(
            "# Written by control's local provider: what the image provides on a real VM.\n{text}"
        ),
    )
}

/// The local machine's layer over the delivered `agent.toml`: where the stand-in cloudflared
/// and the slice are, short grace periods, and the delivered files' paths under the VM's
/// root. The delivered identity stays as delivered; the control URL only when this machine
/// reaches control elsewhere (a replica of its own, see `LocalVmConfig::control_urls`).
fn local_layer(
    vm_dir: &Path,
    delivered: &AgentToml,
    slice: &Path,
    config: &LocalVmConfig,
) -> Result<toml::Table, ProviderError> {
    let root = |path: &Option<PathBuf>| {
        path.as_ref().map(|p| {
            if p.is_absolute() {
                rooted(vm_dir, p)
            } else {
                p.clone()
            }
        })
    };
    // The Agent's own tunnel's token when it has one, else one made up for the stand-in.
    let token_file = if let Some(path) = root(&delivered.cloudflared.token_file) {
        path
    } else {
        let path = vm_dir.join("stand-in-tunnel-token");
        let token =
            crate::auth::random_secret().map_err(|e| ProviderError::transient(e.to_string()))?;
        write_secret(&path, &format!("local-tunnel-{token}"))?;
        path
    };
    let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_owned(), |user| user.name);
    let control_url = Some(config.control_url_for(&delivered.agent_id))
        .filter(|url| !url.is_empty() && *url != delivered.control_url);
    let file = AgentToml {
        // Decided by the URL this layer sets, whatever the document said for its own.
        allow_insecure_control: control_url.as_ref().map(|url| url.starts_with("http://")),
        control_ca_file: config.control_ca_file.clone(),
        bootstrap_token_file: root(&delivered.bootstrap_token_file),
        credential_file: Some(vm_dir.join("state/credential")),
        status_socket: Some(vm_dir.join("status.sock")),
        cloudflared: CloudflaredToml {
            binary: Some(config.cloudflared.clone()),
            token_file: Some(token_file),
            metrics: Some(format!("127.0.0.1:{}", free_port()?)),
            extra_args: vec!["--grace-period".to_owned(), "1s".to_owned()],
            stop_grace_s: Some(5),
            ..CloudflaredToml::default()
        },
        slice: SliceToml {
            path: Some(slice.to_owned()),
            owner: Some(owner),
            mountinfo: Some(vm_dir.join("mountinfo")),
            ..SliceToml::default()
        },
        heartbeat: HeartbeatToml {
            interval_s: Some(config.heartbeat_interval.as_secs().max(1)),
            // A local control restarts in seconds: retry well within the health window.
            backoff_max_s: Some((config.heartbeat_interval.as_secs() * 10).max(10)),
            ..HeartbeatToml::default()
        },
        ..AgentToml::default()
    };
    let mut table =
        toml::Table::try_from(&file).map_err(|e| transient("writing the config of", vm_dir, e))?;
    // Who the Agent is comes from its document alone.
    table.remove("agent_id");
    table.remove("image_version");
    match control_url {
        Some(url) => {
            table.insert("control_url".to_owned(), toml::Value::String(url));
        }
        None => {
            table.remove("control_url");
        }
    }
    Ok(table)
}
