//! The `local` provider: each Agent's "VM" and each Plain VM's server lives on this machine,
//! so the whole system runs on a laptop with no cloud account.
//!
//! With [`LocalProvider::with_processes`] (what `control serve` uses) a VM is a directory under
//! the data dir holding, under `root/` (the VM's `/`), what the Agent's rendered cloud-init
//! document delivers, written verbatim by [`crate::cloud_init::deliver`] as cloud-init's
//! `write_files` would (`etc/vm-agent/agent.toml`, the bootstrap and tunnel tokens, 0600), so
//! the laptop path and the cloud path share one renderer. What the image provides on a real
//! VM (the stand-in cloudflared, the slice and its mount table, where the agent keeps its
//! credential and status socket, short grace periods, the delivered files' paths under
//! `root/`) is the machine's own vm-agent drop-in, `etc/vm-agent/agent.d/10-local.toml`; the
//! delivered file is never rewritten. A VM laid out by an earlier release (its own
//! `agent.toml` and tokens at the top of its directory) keeps running from that file. Each VM
//! also has a running **vm-agent process** supervising the stand-in cloudflared and
//! heartbeating to control. The directory is the
//! source of truth, shared by every replica: `vm.json` records whether the VM is powered on and
//! which process is its agent. A VM survives control restarts like a real one (its agent runs
//! in its own process group and is adopted afterwards, told apart from a reused PID by its
//! start time), and [`LocalProvider::supervise`] starts a dead agent again as systemd's
//! `Restart=always` would, under a per-VM file lock so two replicas never start two.
//!
//! A **Plain VM** (a server labelled with the `plain_vm` kind) is simulated, never run: its
//! directory holds its one-shot cloud-init document as `user-data` (0600, as in a `NoCloud`
//! seed) and its `vm.json`, which says it is plain. No process is ever started for it, by
//! creating, powering on or supervising: powering it on or off (a shutdown included) flips its
//! record at once. It reports public addresses from the documentation ranges (`192.0.2.0/24` and
//! `2001:db8::/32`), the same for a VM every time, which nothing can reach. An Agent's document
//! for a Plain VM, or a Plain VM's for an Agent, is refused.
//!
//! [`LocalProvider::in_memory`] keeps VMs as records in memory, for tests of control alone;
//! Plain VMs there are records too.
//!
//! A VM's first boot reads the cloud-init document control renders for it
//! ([`crate::cloud_init`]), as a real one would. Files: [`servers`] (the `Servers` capability),
//! [`vm`] (the record, its lock, the directory), [`process`] (an Agent's vm-agent),
//! [`programs`] (building the programs VMs run); [`cloud`] and [`records`] (what a cloud keeps
//! besides servers) with [`firewalls`], [`volumes`] and [`tunnels`]; [`slices`] (copying a slice for a clone).

mod cloud;
mod firewalls;
mod process;
pub mod programs;
mod qemu;
mod records;
mod servers;
mod slices;
mod tunnels;
mod vm;
mod volumes;

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use self::process::ensure_agent;
use self::vm::{LocalVm, read_vm};
use super::{Labels, ProviderError, Secret};
use crate::cloud_init::PlainVmDelivery;
use crate::sync;

pub use qemu::{GUEST_CONTROL, QemuConfig};

/// The name resources on this provider record.
pub const NAME: &str = "local";

/// The local provider as a cloud: servers, firewalls and volumes (its tunnels are added to
/// [`super::Providers`] on their own, as Cloudflare's are).
pub fn cloud(local: std::sync::Arc<LocalProvider>) -> super::Cloud {
    super::Cloud {
        name: NAME,
        servers: local.clone(),
        firewalls: Some(local.clone()),
        volumes: Some(local.clone()),
        // In the `qemu` mode a clone's VM copies the slice itself, from the source's volume
        // lent to it, as on Hetzner; otherwise the provider copies it.
        slices: (!local.qemu_mode()).then_some(local as std::sync::Arc<dyn super::Slices>),
    }
}

/// What the local provider holds for one VM, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalVmView {
    pub running: bool,
    pub image_ref: String,
    pub boots: u64,
    pub bootstrap_token: Option<String>,
    /// The vm-agent process, when the VM runs one (a Plain VM's never does).
    pub pid: Option<u32>,
    /// A Plain VM's: what its cloud-init document delivered. `None` for an Agent's VM.
    pub plain: Option<PlainVmDelivery>,
    /// The VM whose slice this one's started as a copy of (a clone's), when known.
    pub slice_from: Option<String>,
}

/// Where local VMs' programs are and whom their agents report to.
#[derive(Clone, Debug)]
pub struct LocalVmConfig {
    pub vm_agent: PathBuf,
    pub cloudflared: PathBuf,
    /// Control's URLs; each VM's agent reports to one (by its id).
    pub control_urls: Vec<String>,
    /// CA certificates (PEM) the VMs' agents trust for control's certificate, as an image
    /// built for the operator's PKI would carry.
    pub control_ca_file: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    /// `qemu` mode: each Agent's VM is a real VM booted from a baked image ([`qemu`]).
    pub qemu: Option<QemuConfig>,
}

impl LocalVmConfig {
    /// The control URL VM `id` reports to: one of [`Self::control_urls`], by its id.
    pub(super) fn control_url_for(&self, id: &str) -> String {
        let hash = id.bytes().fold(0_usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        self.control_urls
            .get(hash % self.control_urls.len().max(1))
            .cloned()
            .unwrap_or_default()
    }
}

// One per provider, made once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Backing {
    Memory(Mutex<BTreeMap<String, LocalVm>>),
    Processes { dir: PathBuf, config: LocalVmConfig },
}

#[derive(Debug)]
pub struct LocalProvider {
    backing: Backing,
    cloud: cloud::CloudRecords,
    /// In memory: the seeds made for VMs not created yet, by the VM they came from.
    seeds: Mutex<BTreeMap<String, String>>,
}

/// How long a stopping vm-agent gets before SIGKILL (its own cloudflared grace is shorter).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long to wait for a vm-agent sent SIGKILL to be gone.
const AGENT_KILL_WAIT: Duration = Duration::from_secs(5);
/// The wait between two starts of one VM's agent by the supervisor (systemd's `RestartSec`).
const RESTART_SEC: Duration = Duration::from_secs(2);
/// How often a change waiting for a VM's lock looks again.
const LOCK_RETRY: Duration = Duration::from_millis(25);

impl LocalProvider {
    /// VMs that are records in this process's memory.
    pub fn in_memory() -> Self {
        Self {
            backing: Backing::Memory(Mutex::new(BTreeMap::new())),
            cloud: cloud::CloudRecords::memory(),
            seeds: Mutex::default(),
        }
    }

    /// VMs that are directories under `dir`, each running a vm-agent process; firewalls,
    /// volumes and tunnels are records under `dir/.cloud` (a dot name is never a VM).
    pub fn with_processes(dir: &Path, config: LocalVmConfig) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Self {
            backing: Backing::Processes {
                dir: dir.to_owned(),
                config,
            },
            cloud: cloud::CloudRecords::dir(&dir.join(".cloud"))?,
            seeds: Mutex::default(),
        })
    }

    pub fn vm(&self, agent_id: &str) -> Option<LocalVmView> {
        let vm = match &self.backing {
            Backing::Memory(vms) => sync::lock(vms).get(agent_id).cloned()?,
            Backing::Processes { dir, .. } => {
                let vm_dir = Self::vm_dir(dir, agent_id).ok()?;
                let mut vm = read_vm(&vm_dir).ok()?;
                if vm.plain {
                    let document = std::fs::read_to_string(vm_dir.join(servers::USER_DATA));
                    vm.delivery = document
                        .ok()
                        .and_then(|d| crate::cloud_init::read_plain_vm_document(&Secret(d)).ok());
                }
                vm
            }
        };
        Some(LocalVmView {
            running: vm.running,
            image_ref: vm.image_ref,
            boots: vm.boots,
            bootstrap_token: vm.bootstrap_token,
            pid: vm.pid.filter(|_| vm.pid_started.is_some()),
            plain: vm.delivery.filter(|_| vm.plain),
            slice_from: vm.slice_from,
        })
    }

    /// Keeps every powered-on Agent VM's agent running, like systemd's `Restart=always`, until
    /// `shutdown` (Plain VMs are skipped: they run nothing of ours). VMs keep running after
    /// control stops.
    pub async fn supervise(&self, mut shutdown: watch::Receiver<bool>) {
        let Backing::Processes { dir, config } = &self.backing else {
            return;
        };
        let mut last_start: BTreeMap<String, Instant> = BTreeMap::new();
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            for (agent_id, vm_dir) in vm_dirs(dir) {
                if last_start
                    .get(&agent_id)
                    .is_some_and(|at| at.elapsed() < RESTART_SEC)
                {
                    continue;
                }
                match ensure_agent(&vm_dir, config) {
                    Ok(true) => {
                        last_start.insert(agent_id.clone(), Instant::now());
                        info!(
                            agent_id,
                            "local VM: its vm-agent was not running; started it again, as systemd's Restart=always would"
                        );
                    }
                    Ok(false) => {}
                    Err(e) => warn!(agent_id, error = %e, "local VM: cannot start its vm-agent"),
                }
            }
        }
    }
}

impl LocalProvider {
    /// Every VM's record as it stands (a VM being created or destroyed may be missing).
    fn each_vm(&self) -> Vec<LocalVm> {
        match &self.backing {
            Backing::Memory(vms) => sync::lock(vms).values().cloned().collect(),
            Backing::Processes { dir, .. } => vm_dirs(dir)
                .filter_map(|(_, vm_dir)| read_vm(&vm_dir).ok())
                .collect(),
        }
    }

    /// Where a VM `id` lives; ids are ours (labels) but are checked all the same, since they
    /// name a directory.
    /// Whether Agents' VMs are real VMs ([`qemu`]).
    pub fn qemu_mode(&self) -> bool {
        matches!(&self.backing, Backing::Processes { config, .. } if config.qemu.is_some())
    }

    fn vm_dir(dir: &Path, id: &str) -> Result<PathBuf, ProviderError> {
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ProviderError::not_found(format!(
                "VM {}",
                id.escape_debug()
            )));
        }
        Ok(dir.join(id))
    }
}

/// The VMs' directories under `dir`, with their ids. Dot names are not VMs (a destroyed one
/// being deleted, a lock), and every reader of the directory skips them.
fn vm_dirs(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().into_string().ok()?;
            (!id.starts_with('.')).then(|| (id, entry.path()))
        })
}

fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
