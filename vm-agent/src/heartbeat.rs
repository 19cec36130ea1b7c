//! Talks to control: the one-time bootstrap exchange, then heartbeats.
//!
//! Cloud-init left a single-use bootstrap token; the first contact trades it for the Agent's
//! long-lived credential, which is stored with mode 0600, after which the bootstrap file is
//! removed. Heartbeats go one at a time at the interval control answers with. While control is
//! unreachable the agent retries with jittered, growing, capped delays, and the tunnel keeps
//! running: nothing here touches cloudflared. Neither token ever reaches a log line.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use control_api::Timestamp;
use control_api::agent::{
    HEARTBEAT_PATH, Heartbeat, HeartbeatAck, REGISTER_PATH, RegisterRequest, RegisterResponse,
};
use log::Level;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::clock::wall_now;
use crate::config::Config;
use crate::event;
use crate::logging::{Every, ids};
use crate::metrics::{Host, boot_id};
use crate::progress::Progress;
use crate::slice::SliceStatus;
use crate::supervisor::TunnelStatus;

/// The agent's version, as reported to control.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Bounds on the interval control may ask for.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_hours(1);

/// How often a continuing failure is logged again.
const REPEAT_LOG: Duration = Duration::from_mins(5);

/// The heartbeat loop's state, for `vm-agent status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatStatus {
    pub registered: bool,
    pub last_ok: Option<Timestamp>,
    pub last_sequence: u64,
    pub interval_s: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("control at {0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("control refused the {0} (HTTP {1})")]
    Refused(&'static str, u16),
    #[error("control answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Local(String),
}

/// What the heartbeat loop reads from the other subsystems.
#[derive(Debug)]
pub struct Inputs {
    pub tunnel: watch::Receiver<TunnelStatus>,
    pub slice: watch::Receiver<SliceStatus>,
}

pub fn spawn(
    config: Config,
    inputs: Inputs,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
) -> (watch::Receiver<HeartbeatStatus>, JoinHandle<()>) {
    let initial = HeartbeatStatus {
        interval_s: config.heartbeat.interval.as_secs(),
        registered: config.credential_file.exists(),
        ..HeartbeatStatus::default()
    };
    let (status, receiver) = watch::channel(initial);
    (
        receiver,
        tokio::spawn(run(config, inputs, status, progress, shutdown)),
    )
}

struct Sender {
    client: reqwest::Client,
    config: Config,
    boot_id: String,
    started: Instant,
    host: Host,
    failures: u32,
    log_again: Every,
    /// A corrupt clone progress file was logged (once).
    clone_warned: bool,
}

/// The client heartbeats go out with: the system's roots for control's certificate, and the
/// CA certificates of `control_ca_file` besides them.
fn client(config: &Config) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .timeout(config.heartbeat.timeout)
        .user_agent(format!("vm-agent/{AGENT_VERSION}"));
    if let Some(ca) = &config.control_ca {
        let certificates = ca
            .certificates
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.tls_certs_merge(certificates);
    }
    builder.build()
}

async fn run(
    config: Config,
    inputs: Inputs,
    status: watch::Sender<HeartbeatStatus>,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match client(&config) {
        Ok(client) => client,
        Err(e) => {
            event!(
                Level::Error,
                "heartbeat",
                "cannot build the HTTP client: {e}; no heartbeats will be sent"
            );
            return;
        }
    };
    let mut sender = Sender {
        client,
        boot_id: boot_id(),
        started: Instant::now(),
        host: Host::new(),
        failures: 0,
        log_again: Every::default(),
        clone_warned: false,
        config,
    };
    let mut interval = sender.config.heartbeat.interval;
    // Each request is bounded by the client's timeout, each wait by its own length.
    let request_bound = sender.config.heartbeat.timeout;
    let credential = loop {
        progress.next_within(request_bound);
        match sender.credential().await {
            Ok(credential) => break credential,
            Err(failure) => {
                let wait = sender.failed(&failure, interval, &status);
                progress.next_within(wait);
                tokio::select! {
                    () = sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    status.send_modify(|s| s.registered = true);
    let mut sequence = 0_u64;
    loop {
        progress.next_within(request_bound);
        sequence += 1;
        let beat = sender.heartbeat(sequence, &inputs);
        let wait = match sender.send(&credential, &beat).await {
            Ok(ack) => {
                interval = Duration::from_secs(u64::from(ack.heartbeat_interval_s))
                    .clamp(MIN_INTERVAL, MAX_INTERVAL);
                if sender.failures > 0 {
                    event!(
                        Level::Info,
                        "heartbeat",
                        id = ids::CONTROL_REACHABLE,
                        "control reachable again after {} failed attempts",
                        sender.failures
                    );
                }
                sender.failures = 0;
                status.send_modify(|s| {
                    s.last_ok = Some(wall_now());
                    s.last_sequence = sequence;
                    s.interval_s = interval.as_secs();
                    s.consecutive_failures = 0;
                    s.last_error = None;
                });
                interval
            }
            Err(failure) => sender.failed(&failure, interval, &status),
        };
        progress.next_within(wait);
        tokio::select! {
            () = sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
    }
}

impl Sender {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.control_url)
    }

    /// The stored credential, or a new one for the bootstrap token.
    async fn credential(&mut self) -> Result<String, Failure> {
        if let Ok(text) = std::fs::read_to_string(&self.config.credential_file)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_owned());
        }
        let bootstrap =
            std::fs::read_to_string(&self.config.bootstrap_token_file).map_err(|e| {
                Failure::Local(format!(
                    "no credential in {} and no bootstrap token in {}: {e}",
                    self.config.credential_file.display(),
                    self.config.bootstrap_token_file.display()
                ))
            })?;
        let request = RegisterRequest {
            agent_id: self.config.agent_id.clone(),
            bootstrap_token: bootstrap.trim().to_owned(),
            boot_id: self.boot_id.clone(),
            agent_version: AGENT_VERSION.to_owned(),
            image_version: self.config.image_version.clone(),
        };
        let response = self
            .client
            .post(self.url(REGISTER_PATH))
            .json(&request)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(self.config.control_url.clone(), without_url(&e)))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(Failure::Refused(
                    "bootstrap token (already used or expired)",
                    status,
                ));
            }
            _ => return Err(Failure::Status(status)),
        }
        let registered: RegisterResponse = response.json().await.map_err(|e| {
            Failure::Local(format!(
                "control's register answer is unreadable: {}",
                without_url(&e)
            ))
        })?;
        store_secret(&self.config.credential_file, &registered.credential).map_err(|e| {
            Failure::Local(format!(
                "cannot store the credential in {}: {e}",
                self.config.credential_file.display()
            ))
        })?;
        if let Err(e) = std::fs::remove_file(&self.config.bootstrap_token_file) {
            event!(
                Level::Warn,
                "heartbeat",
                "cannot remove the used bootstrap token {}: {e}",
                self.config.bootstrap_token_file.display()
            );
        }
        event!(
            Level::Info,
            "heartbeat",
            "registered with control as {}; credential stored in {}, bootstrap token removed",
            registered.agent_id,
            self.config.credential_file.display()
        );
        Ok(registered.credential)
    }

    fn heartbeat(&mut self, sequence: u64, inputs: &Inputs) -> Heartbeat {
        let tunnel = inputs.tunnel.borrow().clone();
        Heartbeat {
            agent_id: Some(self.config.agent_id.clone()),
            boot_id: self.boot_id.clone(),
            sequence,
            agent_version: AGENT_VERSION.to_owned(),
            image_version: self.config.image_version.clone(),
            agent_uptime_s: self.started.elapsed().as_secs(),
            cloudflared: control_api::agent::TunnelReport {
                state: tunnel.state,
                ready_connections: tunnel.ready_connections,
                restarts: tunnel.restarts,
                crash_loop: tunnel.crash_loop,
                last_exit: tunnel.last_exit,
                since: Some(tunnel.since),
            },
            slice: inputs.slice.borrow().report.clone(),
            host: self.host.sample(),
            clone: self.config.clone_from.as_ref().map(|clone| {
                crate::clone::record::report(&self.config.slice, clone, &mut self.clone_warned)
            }),
        }
    }

    async fn send(&self, credential: &str, beat: &Heartbeat) -> Result<HeartbeatAck, Failure> {
        let response = self
            .client
            .post(self.url(HEARTBEAT_PATH))
            .bearer_auth(credential)
            .json(beat)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(self.config.control_url.clone(), without_url(&e)))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => response.json().await.map_err(|e| {
                Failure::Local(format!(
                    "control's heartbeat answer is unreadable: {}",
                    without_url(&e)
                ))
            }),
            401 | 403 => Err(Failure::Refused("agent credential", status)),
            _ => Err(Failure::Status(status)),
        }
    }

    /// Records a failure, logs it when it starts (and every few minutes while it lasts) and
    /// returns the jittered wait before the next attempt.
    fn failed(
        &mut self,
        failure: &Failure,
        interval: Duration,
        status: &watch::Sender<HeartbeatStatus>,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let now = Instant::now();
        if self.failures == 1 || self.log_again.due(REPEAT_LOG, now) {
            if self.failures == 1 {
                self.log_again.due(REPEAT_LOG, now);
            }
            let level = if matches!(failure, Failure::Refused(..) | Failure::Local(_)) {
                Level::Error
            } else {
                Level::Warn
            };
            event!(
                level,
                "heartbeat",
                id = ids::CONTROL_UNREACHABLE,
                "heartbeat failed ({} in a row): {failure}; retrying with backoff, the tunnel keeps running",
                self.failures
            );
        }
        let ceiling = interval
            .saturating_mul(1_u32 << self.failures.min(10))
            .min(self.config.heartbeat.backoff_max)
            .max(MIN_INTERVAL);
        // Equal jitter: never sooner than half the ceiling, so retries cannot bunch up.
        let half = ceiling / 2;
        let wait = half
            + Duration::from_millis(fastrand::u64(
                0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX),
            ));
        status.send_modify(|s| {
            s.consecutive_failures = self.failures;
            s.last_error = Some(failure.to_string());
        });
        wait
    }
}

/// An HTTP error's message without the URL (which names no secret, but is noise in the log).
fn without_url(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    if let Some(url) = error.url() {
        message = message.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Writes `secret` to `path` with mode 0600, atomically (temp file, then rename).
fn store_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}
