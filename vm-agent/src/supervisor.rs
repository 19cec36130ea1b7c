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
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, sleep, timeout};

use crate::backoff::{Backoff, Delay};
use crate::clock::wall_now;
use crate::config::{Cloudflared, TUNNEL_TOKEN_ENV, TunnelToken};
use crate::event;
use crate::logging::{Admit, RateLimit, cloudflared_level, ids};
use crate::progress::Progress;
use crate::reaper::{Children, Tracked};

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

/// What one run of cloudflared has shown so far.
struct Run {
    /// Since when it has been ready without interruption.
    ready_since: Option<Instant>,
    /// Since when it has been without a ready connection (its start, at first).
    unready_since: Instant,
    /// Ready for the whole stable period in this run (the backoff was reset).
    stable: bool,
}

/// Why a run of cloudflared ended.
enum Outcome {
    Exited(i32),
    /// We stopped it: no ready connection for too long.
    Unready {
        exit: i32,
        for_s: u64,
    },
    SpawnFailed(String),
    Shutdown,
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
            self.forward(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            self.forward(stderr);
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

    /// Copies cloudflared's output into the log, rate-limited and with the token scrubbed.
    fn forward(&self, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let token = self.token_text.clone();
        let mut limit = RateLimit::per_minute(self.config.log_lines_per_minute);
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = match &token {
                    Some(token) if line.contains(token.as_str()) => {
                        line.replace(token.as_str(), "[redacted]")
                    }
                    _ => line,
                };
                let level = cloudflared_level(&line);
                // Lines the log level hides must not use up the budget of those it shows.
                if !log::log_enabled!(target: "cloudflared", level) {
                    continue;
                }
                match limit.admit(Instant::now()) {
                    Admit::No => {}
                    Admit::Yes { dropped_before } => {
                        if dropped_before > 0 {
                            event!(
                                Level::Warn,
                                "cloudflared",
                                "{dropped_before} lines of cloudflared output were dropped (rate limit)"
                            );
                        }
                        event!(level, "cloudflared", "{line}");
                    }
                }
            }
        });
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

    /// Takes one readiness sample into account. Returns how long cloudflared has been without
    /// a ready connection when that is long enough to restart it.
    fn observe(
        &mut self,
        run: &mut Run,
        connections: Option<u32>,
        now: Instant,
    ) -> Option<Duration> {
        let Some(connections) = connections else {
            if run.ready_since.take().is_some() {
                run.unready_since = now;
                run.stable = false;
                event!(
                    Level::Warn,
                    "supervisor",
                    id = ids::TUNNEL_DOWN,
                    "tunnel down: cloudflared has no ready connection"
                );
                self.status.send_modify(|s| s.ready_connections = 0);
                self.enter(TunnelState::Unready, "no ready connection".to_owned());
            }
            let unready_for = now.duration_since(run.unready_since);
            return (unready_for >= self.config.unready_restart_after).then_some(unready_for);
        };
        if run.ready_since.is_none() {
            run.ready_since = Some(now);
            event!(
                Level::Info,
                "supervisor",
                id = ids::TUNNEL_UP,
                "tunnel up: {connections} ready connections"
            );
        }
        self.status
            .send_modify(|s| s.ready_connections = connections);
        self.enter(
            TunnelState::Ready,
            format!("ready with {connections} connections"),
        );
        let stable_now = run
            .ready_since
            .is_some_and(|since| now.duration_since(since) >= self.config.stable_after);
        if !run.stable && stable_now {
            run.stable = true;
            self.backoff.reset();
            let was_looping = self.status.borrow().crash_loop;
            self.status.send_modify(|s| {
                s.crash_loop = false;
                s.backoff_attempt = 0;
                s.backoff_ceiling_ms = None;
            });
            event!(
                Level::Info,
                "supervisor",
                "cloudflared ready for {} s: restart backoff reset{}",
                self.config.stable_after.as_secs(),
                if was_looping { ", crash loop over" } else { "" }
            );
        }
        None
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

    /// Records how a run ended at `now` and decides how long to wait before the next.
    fn after(&mut self, outcome: Outcome, now: Instant) -> Duration {
        let delay = self.backoff.next(now);
        let crash_loop = self.backoff.crash_loop(now);
        let (exit, why) = match outcome {
            Outcome::Exited(code) => (Some(code), format!("cloudflared exited with code {code}")),
            Outcome::Unready { exit, for_s } => (
                Some(exit),
                format!(
                    "cloudflared had no ready connection for {for_s} s; stopped it (exit {exit})"
                ),
            ),
            Outcome::SpawnFailed(error) => (None, error),
            Outcome::Shutdown => (None, String::new()),
        };
        let permanent = exit == Some(PERMANENT_EXIT) || exit.is_none();
        let wait = if permanent {
            delay.wait.max(self.config.failed_retry)
        } else {
            delay.wait
        };
        let was_looping = self.status.borrow().crash_loop;
        self.status.send_modify(|s| {
            s.restarts = s.restarts.saturating_add(1);
            s.last_exit = exit.or(s.last_exit);
            s.crash_loop = crash_loop;
            s.pid = None;
            s.ready_connections = 0;
            s.next_start_in_ms = Some(millis(wait));
            s.backoff_ceiling_ms = Some(millis(delay.ceiling));
            s.backoff_attempt = delay.attempt;
        });
        if permanent {
            self.enter(
                TunnelState::Failed,
                format!("{why}; next try in {} s", wait.as_secs()),
            );
            event!(
                Level::Error,
                "supervisor",
                id = ids::CLOUDFLARED_FAILED,
                "{why}: a usage error or an invalid tunnel token, which retrying soon will not fix; next try in {} s",
                wait.as_secs()
            );
        } else {
            self.enter(
                TunnelState::Backoff,
                format!("{why}; restarting in {} ms", millis(wait)),
            );
            log_restart(&why, wait, delay);
        }
        if crash_loop && !was_looping {
            event!(
                Level::Error,
                "supervisor",
                id = ids::CRASH_LOOP,
                "cloudflared is crash-looping: {} restarts within {} s",
                self.config.crash_loop_restarts,
                self.config.crash_loop_window.as_secs()
            );
        }
        wait
    }
}

fn log_restart(why: &str, wait: Duration, delay: Delay) {
    event!(
        Level::Warn,
        "supervisor",
        id = ids::CLOUDFLARED_RESTART,
        "{why}; restarting in {} ms (attempt {}, ceiling {} ms)",
        millis(wait),
        delay.attempt,
        millis(delay.ceiling)
    );
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> Cloudflared {
        Cloudflared {
            binary: PathBuf::from("/nonexistent/cloudflared"),
            token: TunnelToken::Environment("eyJhIjoidGVzdCJ9".to_owned()),
            metrics: "127.0.0.1:9".parse().unwrap(),
            extra_args: Vec::new(),
            ready_poll: SECOND,
            unready_restart_after: Duration::from_mins(1),
            stop_grace: Duration::from_secs(5),
            backoff_initial: SECOND,
            backoff_max: Duration::from_mins(1),
            stable_after: Duration::from_mins(2),
            crash_loop_restarts: 3,
            crash_loop_window: Duration::from_mins(10),
            failed_retry: Duration::from_mins(5),
            log_lines_per_minute: 10,
        }
    }

    fn supervisor() -> (Supervisor, watch::Receiver<TunnelStatus>) {
        // The probe client needs one, as in `main`; a second install is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (status, receiver) = watch::channel(TunnelStatus::new());
        let (progress, _) = Progress::new();
        let supervisor = Supervisor::new(config(), status, Children::default(), progress);
        (supervisor, receiver)
    }

    /// A run that started at `start`.
    fn run(start: Instant) -> Run {
        Run {
            ready_since: None,
            unready_since: start,
            stable: false,
        }
    }

    #[test]
    fn readiness_comes_and_goes_with_ready_connections() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let mut run = run(t0);
        assert_eq!(supervisor.observe(&mut run, None, t0 + SECOND), None);
        assert_eq!(
            status.borrow().state,
            TunnelState::Starting,
            "not ready yet is still starting"
        );

        assert_eq!(supervisor.observe(&mut run, Some(2), t0 + 2 * SECOND), None);
        assert_eq!(run.ready_since, Some(t0 + 2 * SECOND));
        let ready = status.borrow().clone();
        assert_eq!(
            (ready.state, ready.ready_connections),
            (TunnelState::Ready, 2)
        );
        assert_eq!(ready.detail, "ready with 2 connections");

        assert_eq!(supervisor.observe(&mut run, Some(4), t0 + 3 * SECOND), None);
        assert_eq!(
            run.ready_since,
            Some(t0 + 2 * SECOND),
            "still the same ready spell"
        );
        assert_eq!(status.borrow().ready_connections, 4);

        assert_eq!(supervisor.observe(&mut run, None, t0 + 4 * SECOND), None);
        let unready = status.borrow().clone();
        assert_eq!(
            (unready.state, unready.ready_connections),
            (TunnelState::Unready, 0)
        );
        assert_eq!(
            (run.ready_since, run.unready_since),
            (None, t0 + 4 * SECOND)
        );
    }

    #[test]
    fn it_is_restarted_after_unready_restart_after_without_a_connection() {
        let (mut supervisor, _status) = supervisor();
        let t0 = Instant::now();
        let mut run = run(t0);
        let limit = Duration::from_mins(1);
        let almost = Duration::from_secs(59);
        assert_eq!(supervisor.observe(&mut run, None, t0 + almost), None);
        assert_eq!(supervisor.observe(&mut run, None, t0 + limit), Some(limit));

        // Once it was ready, the time without connections counts from the loss.
        let mut run = self::run(t0);
        supervisor.observe(&mut run, Some(1), t0 + 10 * SECOND);
        let lost = t0 + 100 * SECOND;
        assert_eq!(supervisor.observe(&mut run, None, lost), None);
        assert_eq!(supervisor.observe(&mut run, None, lost + almost), None);
        assert_eq!(
            supervisor.observe(&mut run, None, lost + limit + SECOND),
            Some(limit + SECOND)
        );
    }

    #[test]
    fn restarts_last_exit_and_the_wait_are_recorded() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let wait = supervisor.after(Outcome::Exited(1), t0);
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (1, Some(1)));
        assert_eq!(s.state, TunnelState::Backoff);
        assert!(
            wait <= SECOND,
            "the first wait is drawn under the initial ceiling"
        );
        assert_eq!(s.next_start_in_ms, Some(millis(wait)));
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (1, Some(1_000)));
        assert_eq!((s.pid, s.ready_connections), (None, 0));

        supervisor.after(
            Outcome::Unready {
                exit: 143,
                for_s: 60,
            },
            t0 + SECOND,
        );
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (2, Some(143)));
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (2, Some(2_000)));
        assert!(
            s.detail.contains("no ready connection for 60 s"),
            "{}",
            s.detail
        );

        // A failed start has no exit code: the last one stays.
        supervisor.after(
            Outcome::SpawnFailed("cannot start".to_owned()),
            t0 + 2 * SECOND,
        );
        let s = status.borrow().clone();
        assert_eq!((s.restarts, s.last_exit), (3, Some(143)));
    }

    #[test]
    fn exit_255_and_failed_starts_wait_at_least_failed_retry() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        let wait = supervisor.after(Outcome::Exited(PERMANENT_EXIT), t0);
        assert!(wait >= Duration::from_mins(5), "{wait:?}");
        let s = status.borrow().clone();
        assert_eq!((s.state, s.last_exit), (TunnelState::Failed, Some(255)));
        assert_eq!(s.next_start_in_ms, Some(millis(wait)));

        let wait = supervisor.after(Outcome::SpawnFailed("no such file".to_owned()), t0);
        assert!(wait >= Duration::from_mins(5), "{wait:?}");
        assert_eq!(status.borrow().state, TunnelState::Failed);
        assert!(
            status
                .borrow()
                .detail
                .starts_with("no such file; next try in")
        );

        // Any other exit is an ordinary restart.
        let wait = supervisor.after(Outcome::Exited(1), t0 + SECOND);
        assert!(wait < Duration::from_mins(5), "{wait:?}");
        assert_eq!(status.borrow().state, TunnelState::Backoff);
    }

    #[test]
    fn too_many_restarts_within_the_window_are_a_crash_loop() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        supervisor.after(Outcome::Exited(1), t0);
        supervisor.after(Outcome::Exited(1), t0 + 10 * SECOND);
        assert!(!status.borrow().crash_loop);
        supervisor.after(Outcome::Exited(1), t0 + 20 * SECOND);
        assert!(status.borrow().crash_loop, "3 restarts within 600 s");

        // Restarts spread wider than the window are not.
        let (mut supervisor, status) = self::supervisor();
        for n in 0..5 {
            supervisor.after(Outcome::Exited(1), t0 + n * 301 * SECOND);
        }
        assert!(!status.borrow().crash_loop);
        assert_eq!(status.borrow().restarts, 5);
    }

    #[test]
    fn a_stable_ready_period_resets_the_backoff_and_ends_a_crash_loop() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        for n in 0..3 {
            supervisor.after(Outcome::Exited(1), t0 + n * SECOND);
        }
        assert!(status.borrow().crash_loop);
        assert_eq!(status.borrow().backoff_attempt, 3);

        let started = t0 + 10 * SECOND;
        let mut run = run(started);
        supervisor.observe(&mut run, Some(1), started);
        supervisor.observe(&mut run, Some(1), started + 119 * SECOND);
        assert!(!run.stable, "not yet the stable period");
        assert!(status.borrow().crash_loop);
        assert_eq!(status.borrow().backoff_attempt, 3);

        supervisor.observe(&mut run, Some(1), started + 120 * SECOND);
        assert!(run.stable);
        let s = status.borrow().clone();
        assert!(!s.crash_loop, "the crash loop is over");
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (0, None));

        // The next crash starts from the initial delay, and one crash is no loop.
        let wait = supervisor.after(Outcome::Exited(1), started + 121 * SECOND);
        assert!(wait <= SECOND);
        let s = status.borrow().clone();
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (1, Some(1_000)));
        assert!(!s.crash_loop);
    }

    #[test]
    fn a_ready_spell_shorter_than_the_stable_period_resets_nothing() {
        let (mut supervisor, status) = supervisor();
        let t0 = Instant::now();
        supervisor.after(Outcome::Exited(1), t0);
        supervisor.after(Outcome::Exited(1), t0 + SECOND);
        let mut run = run(t0 + 2 * SECOND);
        supervisor.observe(&mut run, Some(1), t0 + 2 * SECOND);
        supervisor.observe(&mut run, None, t0 + 100 * SECOND);
        // Ready again, but the stable period counts from the new ready spell.
        supervisor.observe(&mut run, Some(1), t0 + 101 * SECOND);
        supervisor.observe(&mut run, Some(1), t0 + 200 * SECOND);
        assert!(!run.stable);
        supervisor.after(Outcome::Exited(1), t0 + 201 * SECOND);
        let s = status.borrow().clone();
        assert_eq!((s.backoff_attempt, s.backoff_ceiling_ms), (3, Some(4_000)));
    }
}
