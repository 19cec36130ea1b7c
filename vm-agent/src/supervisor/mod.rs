//! Supervises `cloudflared`, the VM's only way in.
//!
//! cloudflared runs as `cloudflared tunnel --no-autoupdate --metrics <loopback> run
//! --token-file <file>` (or with `TUNNEL_TOKEN` in its environment): the token is never on its
//! command line, where every user could read it in /proc. It inherits neither the agent's
//! `NOTIFY_SOCKET` nor `WATCHDOG_*`, so it cannot speak to systemd for the agent.
//!
//! "Up" means `/ready` answers 200 with at least one ready connection; a live process with no
//! connections is not up. cloudflared is restarted when it exits and when it stays without
//! connections for `unready_restart_after` (SIGTERM, the grace period, then SIGKILL). Restarts
//! wait an exponentially growing, fully jittered, capped delay, which starts over only after a
//! stable ready period; too many restarts in a window is reported as a crash loop. Exit 255
//! (usage error, invalid token) will not get better by retrying fast, so it waits
//! `failed_retry` instead.
//!
//! The tunnel is never stopped for any reason but the agent's own shutdown.
//!
//! This file runs the processes: start, watch, probe, stop. What a sample or an exit means is
//! decided in `policy.rs`; cloudflared's output reaches the log through `output.rs`.

mod output;
mod policy;

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use control_api::Timestamp;
use control_api::agent::TunnelState;
use control_api::agent_config::SUPERVISOR_ONLY_ENV;
use log::Level;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};

use crate::backoff::Backoff;
use crate::clock::wall_now;
use crate::config::{Cloudflared, TUNNEL_TOKEN_ENV, TunnelToken};
use crate::event;
use crate::logging::ids;
use crate::progress::Progress;
use crate::reaper::{Children, Tracked};
use policy::{Outcome, Run};

/// cloudflared's exit code for usage errors and invalid tokens.
pub const PERMANENT_EXIT: i32 = 255;

/// How long a `/ready` probe may take, body included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the supervisor knows, published on every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub ready_connections: u32,
    pub restarts: u32,
    pub crash_loop: bool,
    pub last_exit: Option<i32>,
    /// When `state` was entered.
    pub since: Timestamp,
    pub pid: Option<u32>,
    /// The wait before the next start, while backing off.
    pub next_start_in_ms: Option<u64>,
    /// The ceiling that wait was drawn under, and which restart it is.
    pub backoff_ceiling_ms: Option<u64>,
    pub backoff_attempt: u32,
    /// One line for humans.
    pub detail: String,
}

impl TunnelStatus {
    fn new() -> Self {
        Self {
            state: TunnelState::Starting,
            ready_connections: 0,
            restarts: 0,
            crash_loop: false,
            last_exit: None,
            since: wall_now(),
            pid: None,
            next_start_in_ms: None,
            backoff_ceiling_ms: None,
            backoff_attempt: 0,
            detail: "starting".to_owned(),
        }
    }
}

/// Starts the supervisor; it runs until `shutdown` turns true, then stops cloudflared
/// gracefully and returns. cloudflared is spawned through `children`, so the reaper leaves
/// its exit status to the supervisor.
pub fn spawn(
    config: Cloudflared,
    children: Children,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<TunnelStatus>, JoinHandle<()>) {
    let (status, receiver) = watch::channel(TunnelStatus::new());
    let supervisor = Supervisor::new(config, status, children, progress);
    (receiver, tokio::spawn(supervisor.run(shutdown)))
}

struct Supervisor {
    config: Cloudflared,
    status: watch::Sender<TunnelStatus>,
    backoff: Backoff,
    probe: Option<reqwest::Client>,
    /// The token's text, kept only to scrub it from cloudflared's output.
    token_text: Option<String>,
    children: Children,
    progress: Progress,
}

#[derive(Deserialize)]
struct ReadyBody {
    #[serde(rename = "readyConnections")]
    ready_connections: u32,
}

/// An exit status as one number: the code, or 128 + the signal that ended the process.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

impl Supervisor {
    fn new(
        config: Cloudflared,
        status: watch::Sender<TunnelStatus>,
        children: Children,
        progress: Progress,
    ) -> Self {
        let token_text = match &config.token {
            TunnelToken::File(path) => std::fs::read_to_string(path).ok(),
            TunnelToken::Environment(token) => Some(token.clone()),
        }
        .map(|t| t.trim().to_owned())
        .filter(|t| t.len() >= 8);
        let probe = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .ok();
        Self {
            backoff: Backoff::new(
                config.backoff_initial,
                config.backoff_max,
                config.crash_loop_restarts,
                config.crash_loop_window,
            ),
            config,
            status,
            probe,
            token_text,
            children,
            progress,
        }
    }

    fn enter(&self, state: TunnelState, detail: String) {
        self.status.send_modify(|s| {
            if s.state != state {
                s.since = wall_now();
            }
            s.state = state;
            s.detail = detail;
        });
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let outcome = match self.start() {
                Ok(child) => self.watch(child, &mut shutdown).await,
                Err(error) => Outcome::SpawnFailed(error),
            };
            let wait = match outcome {
                Outcome::Shutdown => break,
                other => self.after(other, Instant::now()),
            };
            self.progress.next_within(wait);
            tokio::select! {
                () = sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.status.send_modify(|s| {
            s.pid = None;
            s.ready_connections = 0;
            s.next_start_in_ms = None;
        });
        self.enter(
            TunnelState::Stopping,
            "stopped: the agent is shutting down".to_owned(),
        );
        event!(Level::Info, "supervisor", "cloudflared supervision stopped");
    }

    fn start(&mut self) -> Result<Tracked, String> {
        let mut command = Command::new(&self.config.binary);
        command
            .arg("tunnel")
            .arg("--no-autoupdate")
            .arg("--metrics")
            .arg(self.config.metrics.to_string())
            .arg("--management-diagnostics=false")
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in SUPERVISOR_ONLY_ENV {
            command.env_remove(name);
        }
        match &self.config.token {
            TunnelToken::File(path) => {
                command.arg("--token-file").arg(path);
            }
            TunnelToken::Environment(token) => {
                command.env(TUNNEL_TOKEN_ENV, token);
            }
        }
        command.args(&self.config.extra_args);
        let mut child = self
            .children
            .spawn(&mut command)
            .map_err(|e| format!("cannot start {}: {e}", self.config.binary.display()))?;
        let pid = child.id();
        if let Some(stdout) = child.stdout.take() {
            output::forward(
                stdout,
                self.token_text.clone(),
                self.config.log_lines_per_minute,
            );
        }
        if let Some(stderr) = child.stderr.take() {
            output::forward(
                stderr,
                self.token_text.clone(),
                self.config.log_lines_per_minute,
            );
        }
        self.status.send_modify(|s| {
            s.pid = pid;
            s.ready_connections = 0;
            s.next_start_in_ms = None;
        });
        self.enter(
            TunnelState::Starting,
            "started; waiting for a ready connection".to_owned(),
        );
        event!(
            Level::Info,
            "supervisor",
            "cloudflared started (pid {})",
            pid.unwrap_or_default()
        );
        Ok(child)
    }

    /// Is cloudflared ready, with how many connections?
    async fn ready_connections(&self) -> Option<u32> {
        let client = self.probe.as_ref()?;
        let response = client
            .get(format!("http://{}/ready", self.config.metrics))
            .send()
            .await
            .ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        let body: ReadyBody = response.json().await.ok()?;
        (body.ready_connections >= 1).then_some(body.ready_connections)
    }

    /// Follows one run of cloudflared until it exits, must be restarted, or the agent stops.
    async fn watch(&mut self, mut child: Tracked, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        enum Event {
            Exited(std::io::Result<ExitStatus>),
            Tick,
            Shutdown,
        }
        let mut ticks = interval(self.config.ready_poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut run = Run {
            ready_since: None,
            unready_since: Instant::now(),
            stable: false,
        };
        loop {
            // The first tick is immediate, the next `ready_poll` away.
            self.progress.next_within(self.config.ready_poll);
            let next = tokio::select! {
                status = child.wait() => Event::Exited(status),
                _ = ticks.tick() => Event::Tick,
                _ = shutdown.changed() => Event::Shutdown,
            };
            match next {
                Event::Exited(status) => {
                    let code = status.map_or(-1, exit_code);
                    if run.ready_since.is_some() {
                        event!(
                            Level::Warn,
                            "supervisor",
                            id = ids::TUNNEL_DOWN,
                            "tunnel down: cloudflared exited with code {code}"
                        );
                    }
                    return Outcome::Exited(code);
                }
                Event::Shutdown => {
                    self.enter(
                        TunnelState::Stopping,
                        "stopping: the agent is shutting down".to_owned(),
                    );
                    self.stop(&mut child).await;
                    return Outcome::Shutdown;
                }
                Event::Tick => {}
            }
            self.progress.next_within(PROBE_TIMEOUT);
            let connections = self.ready_connections().await;
            if let Some(unready_for) = self.observe(&mut run, connections, Instant::now()) {
                self.progress.next_within(self.config.stop_grace);
                let exit = self.stop(&mut child).await;
                return Outcome::Unready {
                    exit,
                    for_s: unready_for.as_secs(),
                };
            }
        }
    }

    /// SIGTERM, up to the grace period, then SIGKILL. Returns the exit code.
    async fn stop(&self, child: &mut Tracked) -> i32 {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if let Ok(status) = timeout(self.config.stop_grace, child.wait()).await {
            return status.map_or(-1, exit_code);
        }
        event!(
            Level::Warn,
            "supervisor",
            "cloudflared did not stop within {} s of SIGTERM; killing it",
            self.config.stop_grace.as_secs()
        );
        let _ = child.start_kill();
        child.wait().await.map_or(-1, exit_code)
    }
}
