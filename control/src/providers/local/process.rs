//! A local VM's vm-agent process: started in its own process group as systemd would start
//! it on a real VM, found again by its command line, told apart from a reused PID by its
//! start time, and stopped with SIGTERM, a grace period, then SIGKILL to its whole group.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_api::agent_config::{ENV_PREFIX as VM_AGENT_ENV_PREFIX, SUPERVISOR_ONLY_ENV};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::vm::{LocalVm, VmLock, agent_config, read_vm, transient, try_lock_vm, write_vm};
use super::{AGENT_KILL_WAIT, LocalVmConfig, qemu};
use crate::providers::ProviderError;

/// The kernel's id of this boot of the host.
pub(super) fn host_boot() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// A process's start time in clock ticks since boot, `None` if it is gone or a zombie.
pub(super) fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields count from after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the VM's recorded agent process is alive (and really is that process).
pub(super) fn agent_alive(vm: &LocalVm) -> bool {
    vm.process_this_boot()
        .is_some_and(|(pid, started)| process_started(pid) == Some(started))
}

/// Starts the VM's agent if the VM is an Agent's, is on, and its agent is not running (a
/// Plain VM's never runs one). Returns whether it did.
pub(super) fn ensure_agent(vm_dir: &Path, config: &LocalVmConfig) -> Result<bool, ProviderError> {
    let VmLock::Held(_lock) = try_lock_vm(vm_dir)? else {
        return Ok(false); // being changed or destroyed right now; the next tick looks again
    };
    let Ok(mut vm) = read_vm(vm_dir) else {
        return Ok(false); // being created or destroyed
    };
    if vm.plain || !vm.running || agent_alive(&vm) {
        return Ok(false);
    }
    if vm.qemu {
        // A machine whose qemu ended powered off (from inside, or it crashed): it is off,
        // as a cloud reports it, until someone powers it on.
        warn!(vm = %vm.agent_id, "local VM: its qemu has ended; the VM is off");
        vm.running = false;
        vm.clear_process();
        write_vm(vm_dir, &vm)?;
        return Ok(false);
    }
    // What the dead agent left behind (its cloudflared) goes first, as systemd empties a
    // unit's cgroup before restarting it.
    kill_leftovers(&vm);
    spawn_agent(vm_dir, config, &mut vm)?;
    write_vm(vm_dir, &vm)?;
    Ok(true)
}

/// The process running `vm_dir`'s VM, if there is one: a vm-agent whose arguments end in
/// `run --config <its agent.toml>` (see [`agent_config`]), or in `qemu` mode a qemu whose end
/// in `-name local-vm:<vm_dir>`. Only this VM's process is started so.
pub(super) fn find_agent(vm_dir: &Path) -> Option<u32> {
    let config = agent_config(vm_dir);
    let agent = [
        std::ffi::OsStr::new("run"),
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
    ];
    let name = qemu::process_name(vm_dir);
    let machine = [std::ffi::OsStr::new("-name"), std::ffi::OsStr::new(&name)];
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&std::ffi::OsStr> = cmdline
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(std::os::unix::ffi::OsStrExt::from_bytes)
                .collect();
            let ours = args.ends_with(&agent) || args.ends_with(&machine);
            (ours && process_started(pid).is_some()).then_some(pid)
        })
}

/// Makes the VM's vm-agent run: adopts the one already running its configuration (started by
/// an attempt that died before it could record it), or starts one in its own process group
/// (Ctrl-C on control does not reach it), logging to `vm-agent.log` in the VM's directory.
/// Records the process in `vm`; the caller writes the record.
pub(super) fn spawn_agent(
    vm_dir: &Path,
    config: &LocalVmConfig,
    vm: &mut LocalVm,
) -> Result<(), ProviderError> {
    if let Some(pid) = find_agent(vm_dir) {
        info!(vm = %vm.agent_id, pid, "local VM: adopted the vm-agent already running its configuration");
        vm.pid = Some(pid);
        vm.pid_started = process_started(pid);
        vm.host_boot = host_boot();
        return Ok(());
    }
    if let Some(machine) = &config.qemu {
        return spawn_machine(vm_dir, config, machine, vm);
    }
    let mut command = std::process::Command::new(&config.vm_agent);
    command.arg("run").arg("--config").arg(agent_config(vm_dir));
    logged(&mut command, &vm_dir.join("vm-agent.log"))?;
    for name in SUPERVISOR_ONLY_ENV
        .iter()
        .chain(&crate::providers::TOKEN_ENV)
    {
        command.env_remove(name);
    }
    // A VM's agent reads its configuration from its own agent.toml, never from control's
    // environment: a `VM_AGENT_*` variable set for control must not reconfigure every VM.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(VM_AGENT_ENV_PREFIX) {
            command.env_remove(name);
        }
    }
    start(command, vm)
}

/// Points a command's output at `log_path` (appended).
fn logged(command: &mut std::process::Command, log_path: &Path) -> Result<(), ProviderError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| transient("opening", log_path, e))?;
    let err = log
        .try_clone()
        .map_err(|e| transient("opening", log_path, e))?;
    command
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err);
    Ok(())
}

/// `qemu` mode: boots the VM's qemu, reporting to the replica its id picks.
fn spawn_machine(
    vm_dir: &Path,
    config: &LocalVmConfig,
    machine: &qemu::QemuConfig,
    vm: &mut LocalVm,
) -> Result<(), ProviderError> {
    let release = qemu::Release::find(machine, &vm.image_ref)?;
    let control = qemu::host_port(&config.control_url_for(&vm.agent_id))?;
    let mut command = qemu::command(vm_dir, &release, machine, &control);
    logged(&mut command, &vm_dir.join("qemu.log"))?;
    info!(vm = %vm.agent_id, image = %release.dir.display(), "local VM: powering on its qemu");
    start(command, vm)
}

/// Starts `command` in its own process group and records it as the VM's process.
fn start(mut command: std::process::Command, vm: &mut LocalVm) -> Result<(), ProviderError> {
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let program = command.get_program().to_owned();
    let child = command.spawn().map_err(|e| {
        ProviderError::permanent(format!("cannot start {}: {e}", program.display()))
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
pub(super) fn kill_leftovers(vm: &LocalVm) {
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

/// SIGTERM to the VM's agent (it drains cloudflared), SIGKILL after `grace`, then
/// anything left in its process group.
pub(super) async fn stop_agent(vm_dir: &Path, vm: &mut LocalVm, grace: Duration) {
    if !agent_alive(vm)
        && let Some(pid) = find_agent(vm_dir)
    {
        // Started by an attempt that died before recording it: it is this VM's all the same.
        vm.pid = Some(pid);
        vm.pid_started = process_started(pid);
        vm.host_boot = host_boot();
    }
    let Some((pid, started)) = vm.process_this_boot().filter(|_| agent_alive(vm)) else {
        kill_leftovers(vm);
        vm.clear_process();
        return;
    };
    let target = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    if !vm.qemu {
        let _ = kill(target, Signal::SIGTERM);
    } else if grace.is_zero() {
        // Power off: qemu ends on SIGTERM without asking the guest.
        let _ = kill(target, Signal::SIGTERM);
    } else {
        let vm_dir = vm_dir.to_owned();
        let asked = tokio::task::spawn_blocking(move || qemu::acpi_shutdown(&vm_dir)).await;
        if let Ok(Err(e)) = asked {
            warn!(agent_id = %vm.agent_id, error = %e, "local VM: no ACPI shutdown; powering it off");
            let _ = kill(target, Signal::SIGTERM);
        }
    }
    if !gone_within(pid, started, grace).await {
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
pub(super) async fn gone_within(pid: u32, started: u64, within: Duration) -> bool {
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
pub(super) async fn remove_tree(path: PathBuf) -> Result<(), ProviderError> {
    let removing = path.clone();
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&removing) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .map_err(|e| transient("removing", &path, e))?;
    removed.map_err(|e| transient("removing", &path, e))
}
