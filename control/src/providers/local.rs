//! The `local` provider: each Agent's "VM" lives on this machine, so the whole system runs on a
//! laptop with no cloud account.
//!
//! With [`LocalProvider::with_processes`] (what `control serve` uses) a VM is a directory under
//! the data dir holding what cloud-init would deliver (the Agent's `agent.toml`, its bootstrap
//! and tunnel tokens) plus its slice and mount table, and a running **vm-agent process**
//! supervising the stand-in cloudflared and heartbeating to control. The directory is the
//! source of truth, shared by every replica: `vm.json` records whether the VM is powered on and
//! which process is its agent. A VM survives control restarts like a real one (its agent runs
//! in its own process group and is adopted afterwards, told apart from a reused PID by its
//! start time), and [`LocalProvider::supervise`] starts a dead agent again as systemd's
//! `Restart=always` would, under a per-VM file lock so two replicas never start two.
//!
//! [`LocalProvider::in_memory`] keeps VMs as records in memory, for tests of control alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{PowerState, Provider, ProviderError, VmSpec};

/// A VM as recorded in memory or in its `vm.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LocalVm {
    agent_id: String,
    name: String,
    image_ref: String,
    env: BTreeMap<String, String>,
    /// Powered on.
    running: bool,
    /// How many times the VM was powered on; each boot uses the pinned `image_ref`.
    boots: u64,
    /// In memory only: what cloud-init would deliver (a file in the VM's directory otherwise).
    #[serde(default, skip_serializing)]
    bootstrap_token: Option<String>,
    /// The agent process, with its start time (clock ticks since boot) against PID reuse.
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    pid_started: Option<u64>,
    /// The host's boot the agent process was started in: PIDs and start times mean nothing
    /// across a reboot.
    #[serde(default)]
    host_boot: Option<String>,
}

impl LocalVm {
    /// A VM just created from `spec` and powered on for its first boot.
    fn booted(spec: &VmSpec) -> Self {
        Self {
            agent_id: spec.agent_id.clone(),
            name: spec.name.clone(),
            image_ref: spec.image_ref.clone(),
            env: spec.env.clone(),
            running: true,
            boots: 1,
            bootstrap_token: None,
            pid: None,
            pid_started: None,
            host_boot: None,
        }
    }

    /// Forgets the agent process (it is gone).
    fn clear_process(&mut self) {
        self.pid = None;
        self.pid_started = None;
        self.host_boot = None;
    }

    /// The recorded agent process, if it was started in this boot of the host.
    fn process_this_boot(&self) -> Option<(u32, u64)> {
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

/// The kernel's id of this boot of the host.
fn host_boot() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// What the local provider holds for one VM, for tests and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalVmView {
    pub running: bool,
    pub image_ref: String,
    pub boots: u64,
    pub bootstrap_token: Option<String>,
    /// The vm-agent process, when the VM runs one.
    pub pid: Option<u32>,
}

/// Where local VMs' programs are and whom their agents report to.
#[derive(Clone, Debug)]
pub struct LocalVmConfig {
    pub vm_agent: PathBuf,
    pub cloudflared: PathBuf,
    /// Control's URLs; each VM's agent reports to one (by its id).
    pub control_urls: Vec<String>,
    pub heartbeat_interval: Duration,
}

#[derive(Debug)]
enum Backing {
    Memory(Mutex<BTreeMap<String, LocalVm>>),
    Processes { dir: PathBuf, config: LocalVmConfig },
}

#[derive(Debug)]
pub struct LocalProvider {
    backing: Backing,
}

/// How long a stopping vm-agent gets before SIGKILL (its own cloudflared grace is shorter).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long to wait for a vm-agent sent SIGKILL to be gone.
const AGENT_KILL_WAIT: Duration = Duration::from_secs(5);
/// The wait between two starts of one VM's agent by the supervisor (systemd's `RestartSec`).
const RESTART_SEC: Duration = Duration::from_secs(2);
/// How often a change waiting for a VM's lock looks again.
const LOCK_RETRY: Duration = Duration::from_millis(25);

fn transient(what: &str, path: &Path, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Transient(format!("{what} {}: {e}", path.display()))
}

/// A process's start time in clock ticks since boot, `None` if it is gone or a zombie.
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl LocalProvider {
    /// VMs that are records in this process's memory.
    pub fn in_memory() -> Self {
        Self {
            backing: Backing::Memory(Mutex::new(BTreeMap::new())),
        }
    }

    /// VMs that are directories under `dir`, each running a vm-agent process.
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
        })
    }

    pub fn vm(&self, agent_id: &str) -> Option<LocalVmView> {
        let vm = match &self.backing {
            Backing::Memory(vms) => lock(vms).get(agent_id).cloned()?,
            Backing::Processes { dir, .. } => read_vm(&dir.join(agent_id)).ok()?,
        };
        Some(LocalVmView {
            running: vm.running,
            image_ref: vm.image_ref,
            boots: vm.boots,
            bootstrap_token: vm.bootstrap_token,
            pid: vm.pid.filter(|_| vm.pid_started.is_some()),
        })
    }

    /// Keeps every powered-on VM's agent running, like systemd's `Restart=always`, until
    /// `shutdown`. VMs keep running after control stops.
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
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let vm_dir = entry.path();
                let Some(agent_id) = vm_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .filter(|name| !name.starts_with('.'))
                    .map(str::to_owned)
                else {
                    continue; // not a VM (a destroyed one being deleted)
                };
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_vm(vm_dir: &Path) -> std::io::Result<LocalVm> {
    let text = std::fs::read_to_string(vm_dir.join("vm.json"))?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes `vm.json` atomically (temp file, then rename).
fn write_vm(vm_dir: &Path, vm: &LocalVm) -> Result<(), ProviderError> {
    let path = vm_dir.join("vm.json");
    let temp = vm_dir.join(".vm.json.tmp");
    let text = serde_json::to_string_pretty(vm).map_err(|e| transient("encoding", &path, e))?;
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| transient("writing", &path, e))
}

/// What one try for a VM's lock found.
enum VmLock {
    Held(Flock<std::fs::File>),
    /// Another change (in this replica or another) holds it.
    Busy,
    /// The VM's directory is gone (destroyed).
    Gone,
}

/// Tries the VM's lock file once.
fn try_lock_vm(vm_dir: &Path) -> Result<VmLock, ProviderError> {
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
async fn lock_vm(vm_dir: &Path) -> Result<Flock<std::fs::File>, ProviderError> {
    loop {
        match try_lock_vm(vm_dir)? {
            VmLock::Held(held) => return Ok(held),
            VmLock::Busy => tokio::time::sleep(LOCK_RETRY).await,
            VmLock::Gone => {
                let id = vm_dir.file_name().unwrap_or_default().to_string_lossy();
                return Err(ProviderError::NotFound(id.into_owned()));
            }
        }
    }
}

/// Whether the VM's recorded agent process is alive (and really is that process).
fn agent_alive(vm: &LocalVm) -> bool {
    vm.process_this_boot()
        .is_some_and(|(pid, started)| process_started(pid) == Some(started))
}

/// Starts the VM's agent if the VM is on and its agent is not running. Returns whether it did.
fn ensure_agent(vm_dir: &Path, config: &LocalVmConfig) -> Result<bool, ProviderError> {
    let VmLock::Held(_lock) = try_lock_vm(vm_dir)? else {
        return Ok(false); // being changed or destroyed right now; the next tick looks again
    };
    let Ok(mut vm) = read_vm(vm_dir) else {
        return Ok(false); // being created or destroyed
    };
    if !vm.running || agent_alive(&vm) {
        return Ok(false);
    }
    // What the dead agent left behind (its cloudflared) goes first, as systemd empties a
    // unit's cgroup before restarting it.
    kill_leftovers(&vm);
    spawn_agent(vm_dir, config, &mut vm)?;
    write_vm(vm_dir, &vm)?;
    Ok(true)
}

/// Starts the VM's vm-agent in its own process group (Ctrl-C on control does not reach it),
/// logging to `vm-agent.log` in the VM's directory.
fn spawn_agent(
    vm_dir: &Path,
    config: &LocalVmConfig,
    vm: &mut LocalVm,
) -> Result<(), ProviderError> {
    let log_path = vm_dir.join("vm-agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| transient("opening", &log_path, e))?;
    let err = log
        .try_clone()
        .map_err(|e| transient("opening", &log_path, e))?;
    let mut command = std::process::Command::new(&config.vm_agent);
    command
        .arg("run")
        .arg("--config")
        .arg(vm_dir.join("agent.toml"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("TUNNEL_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().map_err(|e| {
        ProviderError::Permanent(format!("cannot start {}: {e}", config.vm_agent.display()))
    })?;
    let pid = child.id();
    // Reaped by the thread below while this control runs; adopted by init after it exits.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    vm.pid = Some(pid);
    vm.pid_started = process_started(pid);
    vm.host_boot = host_boot();
    Ok(())
}

/// Kills whatever is left in the process group of the VM's last agent (the agent was its
/// leader, its cloudflared a member) once the agent itself is gone. Only in the boot it was
/// started in, and only while its PID is unused (or its zombie): the kernel never hands out an
/// ID still in use as a process group's, so a live process with that PID means the group is
/// empty and the PID belongs to someone else, whose group must not be touched.
fn kill_leftovers(vm: &LocalVm) {
    let Some((pid, _)) = vm.process_this_boot() else {
        return;
    };
    if vm.host_boot.is_none() || process_started(pid).is_some() {
        return;
    }
    if let Ok(group) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

/// SIGTERM to the VM's agent (it drains cloudflared), SIGKILL after the grace period, then
/// anything left in its process group.
async fn stop_agent(vm: &mut LocalVm) {
    let Some((pid, started)) = vm.process_this_boot().filter(|_| agent_alive(vm)) else {
        kill_leftovers(vm);
        vm.clear_process();
        return;
    };
    let target = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let _ = kill(target, Signal::SIGTERM);
    if !gone_within(pid, started, AGENT_STOP_GRACE).await {
        warn!(agent_id = %vm.agent_id, pid, "local VM: vm-agent did not stop in time; killing it");
        let _ = kill(target, Signal::SIGKILL);
        if !gone_within(pid, started, AGENT_KILL_WAIT).await {
            // Stuck in the kernel; nothing more a supervisor can do. Forget it rather than
            // hold the VM's lock forever.
            error!(agent_id = %vm.agent_id, pid, "local VM: vm-agent survived SIGKILL; leaving it behind");
        }
    }
    kill_leftovers(vm);
    vm.clear_process();
}

/// Waits up to `within` for the process `pid` started at `started` to be gone.
async fn gone_within(pid: u32, started: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while process_started(pid) == Some(started) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Deletes a directory tree (a VM's slice may be large) off the runtime's threads.
async fn remove_tree(path: PathBuf) -> Result<(), ProviderError> {
    let removing = path.clone();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&removing) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .map_err(|e| transient("removing", &path, e))?;
    removed.map_err(|e| transient("removing", &path, e))
}

fn free_port() -> Result<u16, ProviderError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| {
            ProviderError::Transient(format!("no free port for cloudflared's metrics: {e}"))
        })
}

fn write_secret(path: &Path, text: &str) -> Result<(), ProviderError> {
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
fn lay_out(vm_dir: &Path, spec: &VmSpec, config: &LocalVmConfig) -> Result<(), ProviderError> {
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
    let tunnel_token = format!(
        "local-tunnel-{}",
        crate::auth::random_secret().map_err(|e| ProviderError::Transient(e.to_string()))?
    );
    write_secret(&vm_dir.join("tunnel-token"), &tunnel_token)?;
    let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_owned(), |user| user.name);
    let hash = spec.agent_id.bytes().fold(0_usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let control_url = config
        .control_urls
        .get(hash % config.control_urls.len().max(1))
        .cloned()
        .unwrap_or_default();
    let dir = vm_dir.display();
    let mut toml = String::new();
    let _ = write!(
        toml,
        r#"# Written by control's local provider: what cloud-init would deliver to a real VM.
agent_id = "{agent_id}"
image_version = "{image}"
control_url = "{control_url}"
allow_insecure_control = true
bootstrap_token_file = "{dir}/bootstrap-token"
credential_file = "{dir}/state/credential"
status_socket = "{dir}/status.sock"

[cloudflared]
binary = "{cloudflared}"
token_file = "{dir}/tunnel-token"
metrics = "127.0.0.1:{port}"
extra_args = ["--grace-period", "1s"]
stop_grace_s = 5

[slice]
path = "{slice}"
owner = "{owner}"
mountinfo = "{dir}/mountinfo"

[heartbeat]
interval_s = {interval}
backoff_max_s = {backoff_max}
"#,
        agent_id = spec.agent_id,
        image = spec.env.get("PLATFORM_RELEASE").unwrap_or(&spec.image_ref),
        cloudflared = config.cloudflared.display(),
        port = free_port()?,
        slice = slice.display(),
        interval = config.heartbeat_interval.as_secs().max(1),
        // A local control restarts in seconds: retry well within the health window.
        backoff_max = (config.heartbeat_interval.as_secs() * 10).max(10),
    );
    std::fs::write(vm_dir.join("agent.toml"), toml)
        .map_err(|e| transient("writing the config of", vm_dir, e))
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &VmSpec) -> Result<String, ProviderError> {
        let token = spec.bootstrap_token.as_ref().map(|t| t.0.clone());
        match &self.backing {
            Backing::Memory(vms) => {
                let mut vms = lock(vms);
                // The VM id is the Agent id: a retried create finds and adopts the first one,
                // and gives it the retry's bootstrap token (the earlier one was replaced).
                let vm = vms
                    .entry(spec.agent_id.clone())
                    .or_insert_with(|| LocalVm::booted(spec));
                vm.bootstrap_token = token;
            }
            Backing::Processes { dir, config } => {
                let vm_dir = dir.join(&spec.agent_id);
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&vm_dir)
                    .map_err(|e| transient("creating", &vm_dir, e))?;
                let _lock = lock_vm(&vm_dir).await?;
                let mut vm = if let Ok(vm) = read_vm(&vm_dir) {
                    vm
                } else {
                    lay_out(&vm_dir, spec, config)?;
                    LocalVm::booted(spec)
                };
                // Cloud-init's delivery; a retry replaces an unused token.
                if let Some(token) = &token
                    && !vm_dir.join("state/credential").exists()
                {
                    write_secret(&vm_dir.join("bootstrap-token"), token)?;
                }
                // A retried create adopts the VM as it is: powered off stays off.
                if vm.running && !agent_alive(&vm) {
                    spawn_agent(&vm_dir, config, &mut vm)?;
                }
                write_vm(&vm_dir, &vm)?;
            }
        }
        Ok(spec.agent_id.clone())
    }

    async fn start(&self, provider_id: &str, spec: &VmSpec) -> Result<(), ProviderError> {
        let check_image = |vm: &LocalVm| {
            if vm.image_ref == spec.image_ref {
                Ok(())
            } else {
                Err(ProviderError::Permanent(format!(
                    "VM {provider_id} was created from {} but was asked to boot {}",
                    vm.image_ref, spec.image_ref
                )))
            }
        };
        match &self.backing {
            Backing::Memory(vms) => {
                let mut vms = lock(vms);
                let vm = vms
                    .get_mut(provider_id)
                    .ok_or_else(|| ProviderError::NotFound(provider_id.to_owned()))?;
                check_image(vm)?;
                if !vm.running {
                    vm.running = true;
                    vm.boots += 1;
                }
            }
            Backing::Processes { dir, config } => {
                let vm_dir = dir.join(provider_id);
                let _lock = lock_vm(&vm_dir).await?;
                let mut vm = read_vm(&vm_dir)
                    .map_err(|_| ProviderError::NotFound(provider_id.to_owned()))?;
                check_image(&vm)?;
                if !vm.running {
                    vm.running = true;
                    vm.boots += 1;
                }
                if !agent_alive(&vm) {
                    spawn_agent(&vm_dir, config, &mut vm)?;
                }
                write_vm(&vm_dir, &vm)?;
            }
        }
        Ok(())
    }

    async fn stop(&self, provider_id: &str) -> Result<(), ProviderError> {
        match &self.backing {
            Backing::Memory(vms) => {
                lock(vms)
                    .get_mut(provider_id)
                    .ok_or_else(|| ProviderError::NotFound(provider_id.to_owned()))?
                    .running = false;
            }
            Backing::Processes { dir, .. } => {
                let vm_dir = dir.join(provider_id);
                let _lock = lock_vm(&vm_dir).await?;
                let mut vm = read_vm(&vm_dir)
                    .map_err(|_| ProviderError::NotFound(provider_id.to_owned()))?;
                // Off first, so no supervisor starts the agent again while it stops.
                vm.running = false;
                write_vm(&vm_dir, &vm)?;
                stop_agent(&mut vm).await;
                write_vm(&vm_dir, &vm)?;
            }
        }
        Ok(())
    }

    async fn destroy(
        &self,
        provider_id: Option<&str>,
        agent_id: &str,
    ) -> Result<(), ProviderError> {
        let id = provider_id.unwrap_or(agent_id);
        match &self.backing {
            Backing::Memory(vms) => {
                lock(vms).remove(id);
            }
            Backing::Processes { dir, .. } => {
                let vm_dir = dir.join(id);
                // Dot names are skipped by every supervisor.
                let trash = dir.join(format!(".destroyed-{id}"));
                match lock_vm(&vm_dir).await {
                    Ok(held) => {
                        if let Ok(mut vm) = read_vm(&vm_dir) {
                            vm.running = false;
                            write_vm(&vm_dir, &vm)?;
                            stop_agent(&mut vm).await;
                        }
                        // Out of every replica's sight at once, still under the lock (a
                        // directory being deleted file by file would be half a VM).
                        remove_tree(trash.clone()).await?;
                        std::fs::rename(&vm_dir, &trash)
                            .map_err(|e| transient("removing", &vm_dir, e))?;
                        drop(held);
                    }
                    Err(ProviderError::NotFound(_)) => {} // gone already, perhaps half-way
                    Err(e) => return Err(e),
                }
                remove_tree(trash).await?;
            }
        }
        Ok(())
    }

    async fn power_state(&self, provider_id: &str) -> Result<Option<PowerState>, ProviderError> {
        let running = match &self.backing {
            Backing::Memory(vms) => lock(vms).get(provider_id).map(|vm| vm.running),
            Backing::Processes { dir, .. } => {
                read_vm(&dir.join(provider_id)).ok().map(|vm| vm.running)
            }
        };
        // Powered on is powered on, whatever its agent is doing (a real VM is billed either way).
        Ok(running.map(|on| {
            if on {
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
            bootstrap_token: Some(super::super::Secret("agb_token".to_owned())),
        }
    }

    #[tokio::test]
    async fn in_memory_vms_boot_their_pinned_image_only() {
        let provider = LocalProvider::in_memory();
        let id = provider.create(&spec()).await.unwrap();
        assert_eq!(provider.create(&spec()).await.unwrap(), id, "create adopts");
        assert_eq!(
            provider.vm(&id).unwrap().bootstrap_token.as_deref(),
            Some("agb_token")
        );
        provider.stop(&id).await.unwrap();
        assert_eq!(
            provider.power_state(&id).await.unwrap(),
            Some(PowerState::Off)
        );
        provider.start(&id, &spec()).await.unwrap();
        let vm = provider.vm(&id).unwrap();
        assert_eq!(
            (vm.running, vm.image_ref.as_str(), vm.boots),
            (true, "local-2026.11.0", 2)
        );
        let newer = VmSpec {
            image_ref: "local-2026.12.0".to_owned(),
            ..spec()
        };
        assert!(
            matches!(
                provider.start(&id, &newer).await,
                Err(ProviderError::Permanent(_))
            ),
            "a VM only ever boots the image it was created from"
        );
        provider.destroy(Some(&id), "agt_1").await.unwrap();
        provider.destroy(Some(&id), "agt_1").await.unwrap();
        assert_eq!(provider.power_state(&id).await.unwrap(), None);
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
        let mut vm = LocalVm::booted(&spec());
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
            matches!(lock_vm(&gone).await, Err(ProviderError::NotFound(id)) if id == "agt_gone")
        );
    }

    #[test]
    fn process_start_times_tell_processes_apart() {
        let own = process_started(std::process::id()).unwrap();
        assert!(own > 0);
        assert_eq!(process_started(u32::MAX), None);
    }
}
