//! A local VM's record (`vm.json`), its lock file, and the directory cloud-init would fill
//! (an Agent's configuration and tokens; a Plain VM's `user-data`, as a `NoCloud` seed).

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use control_api::agent_config::{AgentToml, CloudflaredToml, HeartbeatToml, SliceToml};
use control_api::usage::ResourceKind;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::process::host_boot;
use super::{LOCK_RETRY, LocalVmConfig};
use crate::cloud_init::{AgentFirstBoot, PlainVmDelivery};
use crate::providers::{
    Labels, ProviderError, Server, ServerSpec, ServerStatus, labelled_kind, resource_labels,
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

/// Lays out a new VM's directory: what cloud-init would deliver, its slice and mount table.
pub(super) fn lay_out(
    vm_dir: &Path,
    first_boot: &AgentFirstBoot,
    config: &LocalVmConfig,
) -> Result<(), ProviderError> {
    let identity = &first_boot.identity;
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
    // The Agent's own tunnel's token when it has one, else one made up for the stand-in.
    let tunnel_token = match &first_boot.tunnel_token {
        Some(token) => token.0.clone(),
        None => format!(
            "local-tunnel-{}",
            crate::auth::random_secret().map_err(|e| ProviderError::transient(e.to_string()))?
        ),
    };
    write_secret(&vm_dir.join("tunnel-token"), &tunnel_token)?;
    let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_owned(), |user| user.name);
    let hash = identity.agent_id.bytes().fold(0_usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let control_url = config
        .control_urls
        .get(hash % config.control_urls.len().max(1))
        .cloned()
        .unwrap_or_default();
    let file = AgentToml {
        agent_id: identity.agent_id.clone(),
        image_version: identity.image_version.clone(),
        control_url,
        allow_insecure_control: Some(true),
        bootstrap_token_file: Some(vm_dir.join("bootstrap-token")),
        credential_file: Some(vm_dir.join("state/credential")),
        status_socket: Some(vm_dir.join("status.sock")),
        log_level: None,
        cloudflared: CloudflaredToml {
            binary: Some(config.cloudflared.clone()),
            token_file: Some(vm_dir.join("tunnel-token")),
            metrics: Some(format!("127.0.0.1:{}", free_port()?)),
            extra_args: vec!["--grace-period".to_owned(), "1s".to_owned()],
            stop_grace_s: Some(5),
            ..CloudflaredToml::default()
        },
        slice: SliceToml {
            path: Some(slice),
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
    };
    let text = file
        .to_toml()
        .map_err(|e| transient("writing the config of", vm_dir, e))?;
    let toml = format!(
        "# Written by control's local provider: what cloud-init would deliver to a real VM.\n{text}"
    );
    std::fs::write(vm_dir.join("agent.toml"), toml)
        .map_err(|e| transient("writing the config of", vm_dir, e))
}
