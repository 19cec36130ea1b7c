//! Reaps the orphans the agent inherits.
//!
//! The agent is a child subreaper, so what cloudflared forks and leaves behind is reparented to
//! the agent rather than to PID 1. That makes waiting on those orphans the agent's job: one
//! nobody waits on stays a zombie until the agent exits, holding a pid and a slot of the unit's
//! `TasksMax`. Like kata's agent (`handle_sigchild`), this task wakes on SIGCHLD, and on a slow
//! interval in case a signal was missed, and waits on every orphan that has exited.
//!
//! It must never wait on a child another task awaits: the supervisor learns cloudflared's exit
//! code from tokio's `Child::wait`, which would get nothing if the reaper took the status
//! first. So every child the agent spawns goes through [`Children::spawn`], which registers its
//! pid, and the reaper never calls `waitpid(-1)`: it peeks at the next zombie without reaping
//! it (`waitid(P_ALL, WNOWAIT)`) and waits on that pid only when it is not registered. A
//! registered zombie is left to its owner, and the sweep is tried again shortly, since it hides
//! any orphan behind it. (`/proc/self/task/*/children` would list the orphans directly, but not
//! every kernel has it, and scanning every process in `/proc` would read the customer's.)

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::Level;
use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep};

use crate::event;
use crate::logging::{Admit, RateLimit};
use crate::progress::Progress;

/// A sweep in case a SIGCHLD was missed (signals of the same kind coalesce).
pub const BACKSTOP: Duration = Duration::from_secs(30);

/// How soon to sweep again when a registered child's zombie hid the others: its owner reaps it
/// at once, so this is short.
const RETRY: Duration = Duration::from_millis(200);

/// A bound on one sweep, so that a zombie the kernel keeps reporting cannot spin the agent.
const MAX_PER_SWEEP: usize = 1024;

/// Reaped orphans logged per minute; a fork-happy cloudflared must not flood the journal.
const LOG_LINES_PER_MINUTE: u32 = 30;

/// The pids of the children that tasks of the agent await, which the reaper leaves alone.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pids: Arc<Mutex<HashSet<i32>>>,
}

impl Children {
    /// Spawns `command` and registers the child's pid. The registry stays locked from before
    /// the fork until the pid is in it, and a sweep holds the same lock: otherwise a child
    /// that exits at once (or one whose exec failed, which the standard library reaps itself)
    /// could be taken for an orphan.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<Tracked> {
        let mut pids = self.lock();
        let child = command.spawn()?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
        if let Some(pid) = pid {
            pids.insert(pid);
        }
        drop(pids);
        Ok(Tracked {
            child,
            pid,
            children: self.clone(),
        })
    }

    /// Whether a task awaits `pid`.
    pub fn is_registered(&self, pid: i32) -> bool {
        self.lock().contains(&pid)
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        // The set is valid whatever a panicking holder was doing: inserts and removes are whole.
        self.pids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A child registered with [`Children`] for as long as this lives.
#[derive(Debug)]
pub struct Tracked {
    child: Child,
    pid: Option<i32>,
    children: Children,
}

impl Deref for Tracked {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for Tracked {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Once its owner is gone nobody awaits the child: if it was not waited for, the reaper
        // may take it (tokio's own orphan queue tolerates finding it gone).
        if let Some(pid) = self.pid {
            self.children.lock().remove(&pid);
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// The orphans reaped: pid and exit status (the code, or 128 + the signal).
    pub reaped: Vec<(i32, i32)>,
    /// A registered child's zombie was first in line and may hide orphans: sweep again soon.
    pub blocked: bool,
    /// Why the sweep stopped early, if it did.
    pub error: Option<Errno>,
}

/// Reaps every exited child that is not registered, without touching registered ones.
pub fn sweep(children: &Children) -> Sweep {
    let mut sweep = Sweep::default();
    let registered = children.lock();
    for _ in 0..MAX_PER_SWEEP {
        let peeked = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peeked {
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => break,
            },
            Err(Errno::EINTR) => continue,
            // No children at all.
            Err(Errno::ECHILD) => break,
            Err(error) => {
                sweep.error = Some(error);
                break;
            }
        };
        if registered.contains(&pid.as_raw()) {
            sweep.blocked = true;
            break;
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                // Peeked as exited yet not waitable: stop rather than peek it forever.
                sweep.error = Some(Errno::EAGAIN);
                break;
            }
            Ok(status) => sweep.reaped.push((pid.as_raw(), exit_status(status))),
            // Reaped, but ended by a signal nix has no name for.
            Err(Errno::EINVAL) => sweep.reaped.push((pid.as_raw(), -1)),
            Err(error) => {
                sweep.error = Some(error);
                break;
            }
        }
    }
    sweep
}

/// An exit status as one number, as for cloudflared: the code, or 128 + the signal.
fn exit_status(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        _ => -1,
    }
}

/// Starts the reaper; it sweeps on every SIGCHLD and every [`BACKSTOP`] until `shutdown`.
pub fn spawn(
    children: Children,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(stream) => Some(stream),
            Err(e) => {
                event!(
                    Level::Error,
                    "reaper",
                    "cannot listen for SIGCHLD: {e}; orphans are reaped every {} s only",
                    BACKSTOP.as_secs()
                );
                None
            }
        };
        let mut backstop = interval(BACKSTOP);
        backstop.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut limit = RateLimit::per_minute(LOG_LINES_PER_MINUTE);
        let mut blocked = false;
        let mut failing = false;
        loop {
            progress.next_within(BACKSTOP);
            tokio::select! {
                () = async {
                    match sigchld.as_mut() {
                        Some(stream) => { stream.recv().await; }
                        None => std::future::pending().await,
                    }
                } => {}
                _ = backstop.tick() => {}
                () = sleep(RETRY), if blocked => {}
                _ = shutdown.changed() => break,
            }
            let swept = sweep(&children);
            blocked = swept.blocked;
            for (pid, status) in swept.reaped {
                if let Admit::Yes { dropped_before } = limit.admit(Instant::now()) {
                    if dropped_before > 0 {
                        event!(
                            Level::Info,
                            "reaper",
                            "{dropped_before} more reaped orphans were not logged (rate limit)"
                        );
                    }
                    event!(
                        Level::Info,
                        "reaper",
                        "reaped orphan pid {pid} (exit status {status})"
                    );
                }
            }
            // Said once per failing spell, not on every SIGCHLD.
            match swept.error {
                Some(error) if !failing => {
                    failing = true;
                    event!(
                        Level::Warn,
                        "reaper",
                        "cannot wait on exited children: {error}; orphans may stay zombies"
                    );
                }
                Some(_) => {}
                None => failing = false,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn statuses_read_like_cloudflareds() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_status(WaitStatus::Exited(pid, 3)), 3);
        assert_eq!(
            exit_status(WaitStatus::Signaled(
                pid,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            137
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), -1);
    }
}
