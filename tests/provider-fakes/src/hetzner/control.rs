//! The test's handle on a running fake: what exists in the project, how many calls each route
//! took, and the faults to inject. It never goes through HTTP, so using it spends no budget and
//! counts no call.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use tokio::time::Instant;

use super::catalog::Image;
use super::state::{ActionStatus, Rule};
use super::{Shared, lock};
use crate::common::faults;

/// What an injected fault does to a matching call; its error code is Hetzner's (`locked`, …).
pub type Fault = faults::Fault<String>;

/// Inspection and fault injection for one running fake; cheap to clone. Its faults, call counts
/// and answers are `common::control::Control`'s; the rest is Hetzner's.
pub type Control = crate::common::control::Control<Shared>;

#[derive(Clone, Debug)]
pub struct ServerView {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub server_type: String,
    pub location: String,
    pub image: u64,
    pub firewalls: Vec<u64>,
    pub volumes: Vec<u64>,
    pub user_data: Option<String>,
    /// The create request's `public_net` as it was sent, `(enable_ipv4, enable_ipv6)` with
    /// each `None` when left out; `None` when the request had no `public_net`.
    pub public_net: Option<(Option<bool>, Option<bool>)>,
}

#[derive(Clone, Debug)]
pub struct FirewallView {
    pub id: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
    pub servers: Vec<u64>,
}

#[derive(Clone, Debug)]
pub struct VolumeView {
    pub id: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub size: u64,
    pub location: String,
    pub server: Option<u64>,
    pub format: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ActionView {
    pub id: u64,
    pub command: String,
    /// `running`, `success` or `error`.
    pub status: String,
    pub progress: u8,
    pub resources: Vec<(u64, String)>,
    pub error_code: Option<String>,
}

impl Control {
    /// The next `times` matching calls answer `status` with Hetzner error `code`.
    pub fn fail_next(&self, method: &Method, template: &str, times: u32, status: u16, code: &str) {
        let message = format!("injected {code}");
        self.inject(
            method,
            template,
            times,
            Fault::Error {
                status,
                code: code.to_owned(),
                message,
            },
        );
    }

    /// The next action running `command` (e.g. `start_server`, `create_server`,
    /// `shutdown_server`) ends in `error` with this code instead of `success`.
    pub fn fail_next_action(&self, command: &str, code: &str, message: &str) {
        self.shared.with(|state, _| {
            state
                .action_failures
                .push((command.to_owned(), code.to_owned(), message.to_owned()));
        });
    }

    /// How long one step of an action runs from now on.
    pub fn set_action_delay(&self, delay: Duration) {
        self.shared.with(|state, _| state.action_delay = delay);
    }

    /// Guests ignore ACPI shutdown: the action succeeds, the server stays running.
    pub fn set_ignore_shutdown(&self, ignore: bool) {
        self.shared.with(|state, _| state.ignore_shutdown = ignore);
    }

    /// A new, full budget of `limit` requests, refilled at `refill_per_second`.
    pub fn set_rate_limit(&self, limit: u32, refill_per_second: f64) {
        let mut gate = lock(&self.shared.gate);
        gate.limiter.limit = limit;
        gate.limiter.refill_per_second = refill_per_second;
        gate.limiter.tokens = f64::from(limit);
        gate.limiter.at = Instant::now();
    }

    /// Registers a snapshot image (what a baked Agent image is at Hetzner) and returns its id.
    pub fn add_snapshot(
        &self,
        description: &str,
        architecture: &str,
        labels: BTreeMap<String, String>,
    ) -> u64 {
        let architecture = if architecture == "arm" { "arm" } else { "x86" };
        self.shared.with(|state, _| {
            let id = state.next_id();
            state.images.push(Image {
                id,
                name: None,
                description: description.to_owned(),
                architecture,
                kind: "snapshot",
                os_flavor: "debian",
                os_version: None,
                labels,
                disk_size: 40.0,
                image_size: Some(1.2),
            });
            id
        })
    }

    pub fn servers(&self) -> Vec<ServerView> {
        self.shared.with(|state, _| {
            state
                .servers
                .values()
                .map(|s| ServerView {
                    id: s.id,
                    name: s.name.clone(),
                    status: s.status.to_owned(),
                    labels: s.labels.clone(),
                    server_type: s.server_type.name.to_owned(),
                    location: s.location.name.to_owned(),
                    image: s.image.id,
                    firewalls: s.firewalls.clone(),
                    volumes: s.volumes.clone(),
                    user_data: s.user_data.clone(),
                    public_net: s.public_net_requested,
                })
                .collect()
        })
    }

    pub fn firewalls(&self) -> Vec<FirewallView> {
        self.shared.with(|state, _| {
            state
                .firewalls
                .values()
                .map(|f| FirewallView {
                    id: f.id,
                    name: f.name.clone(),
                    labels: f.labels.clone(),
                    rules: f.rules.clone(),
                    servers: f.servers.clone(),
                })
                .collect()
        })
    }

    pub fn volumes(&self) -> Vec<VolumeView> {
        self.shared.with(|state, _| {
            state
                .volumes
                .values()
                .map(|v| VolumeView {
                    id: v.id,
                    name: v.name.clone(),
                    labels: v.labels.clone(),
                    size: v.size,
                    location: v.location.name.to_owned(),
                    server: v.server,
                    format: v.format.clone(),
                })
                .collect()
        })
    }

    pub fn actions(&self) -> Vec<ActionView> {
        self.shared.with(|state, _| {
            state
                .actions
                .values()
                .map(|a| ActionView {
                    id: a.id,
                    command: a.command.to_owned(),
                    status: match a.status {
                        ActionStatus::Running => "running",
                        ActionStatus::Success => "success",
                        ActionStatus::Error => "error",
                    }
                    .to_owned(),
                    progress: a.progress,
                    resources: a
                        .resources
                        .iter()
                        .map(|(id, kind)| (*id, (*kind).to_owned()))
                        .collect(),
                    error_code: a.error.as_ref().map(|(code, _)| code.clone()),
                })
                .collect()
        })
    }
}
