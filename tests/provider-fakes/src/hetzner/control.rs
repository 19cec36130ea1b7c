//! The test's handle on a running fake: what exists in the project, how many calls each route
//! took, and the faults to inject. It never goes through HTTP, so using it spends no budget and
//! counts no call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use tokio::time::Instant;

use super::catalog::Image;
use super::middleware::FaultEntry;
use super::state::{ActionStatus, Rule};
use super::{ROUTES, Shared, lock};

/// What an injected fault does to a matching call.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and Hetzner error code instead of doing the call.
    Error {
        status: u16,
        code: String,
        message: String,
    },
    /// Wait this long, then do the call and answer normally.
    Stall(Duration),
    /// Do the call at once, then wait this long before answering (a client that times out
    /// meanwhile has had its call done all the same).
    StallAnswer(Duration),
    /// Do the call (the resource is created, deleted, …), then lose the answer.
    Crash(CrashMode),
}

/// How a crash between "created" and "answered" looks to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// The connection is closed before a full answer arrives.
    DropConnection,
    /// A bare 500 with an empty body.
    EmptyServerError,
}

/// One answer the fake gave, for checking shapes after a test.
#[derive(Clone, Debug)]
pub struct Answer {
    pub method: String,
    /// The route's path template, e.g. `/v1/servers/{id}`.
    pub template: String,
    pub path: String,
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer came from an injected fault rather than from the API's logic.
    pub injected: bool,
}

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

/// Inspection and fault injection for one running fake; cheap to clone.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    pub(crate) fn new(shared: Arc<Shared>) -> Control {
        Control { shared }
    }

    /// Makes the next `times` calls to `method template` (a template from [`ROUTES`], e.g.
    /// `/v1/servers/{id}`) meet `fault`. Faults queue up per route in the order injected.
    ///
    /// # Panics
    /// If the route is not one the fake serves: a typo would otherwise inject nothing.
    pub fn inject(&self, method: &Method, template: &str, times: u32, fault: Fault) {
        assert!(
            ROUTES
                .iter()
                .any(|(m, t)| *m == method.as_str() && *t == template),
            "the Hetzner fake serves no route {method} {template}"
        );
        if times == 0 {
            return;
        }
        lock(&self.shared.gate).faults.push(FaultEntry {
            method: method.as_str().to_owned(),
            template: template.to_owned(),
            remaining: times,
            fault,
        });
    }

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

    /// The next `times` matching calls wait `delay` before they are served.
    pub fn stall_next(&self, method: &Method, template: &str, times: u32, delay: Duration) {
        self.inject(method, template, times, Fault::Stall(delay));
    }

    /// The next `times` matching calls take effect at once but are answered after `delay`.
    pub fn stall_answer_next(&self, method: &Method, template: &str, times: u32, delay: Duration) {
        self.inject(method, template, times, Fault::StallAnswer(delay));
    }

    /// The next `times` matching calls take effect but their answer is lost.
    pub fn crash_next(&self, method: &Method, template: &str, times: u32, mode: CrashMode) {
        self.inject(method, template, times, Fault::Crash(mode));
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.gate).faults.clear();
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
        gate.bucket.limit = limit;
        gate.bucket.refill_per_second = refill_per_second;
        gate.bucket.tokens = f64::from(limit);
        gate.bucket.at = Instant::now();
    }

    pub fn rate_limit_remaining(&self) -> u32 {
        lock(&self.shared.gate).bucket.remaining(Instant::now())
    }

    /// Calls made to one route, whatever their answer. Calls to paths the fake does not serve
    /// count under the template `<unmatched>`.
    pub fn calls(&self, method: &Method, template: &str) -> u64 {
        let gate = lock(&self.shared.gate);
        gate.calls
            .get(&(method.as_str().to_owned(), template.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Calls answered 429 `rate_limit_exceeded` because the budget was spent (injected 429s are
    /// not counted here).
    pub fn rate_limited_calls(&self) -> u64 {
        lock(&self.shared.gate).rate_limited
    }

    pub fn calls_total(&self) -> u64 {
        lock(&self.shared.gate).total
    }

    /// Calls per (method, path template).
    pub fn call_counts(&self) -> BTreeMap<(String, String), u64> {
        lock(&self.shared.gate).calls.clone()
    }

    pub fn reset_calls(&self) {
        let mut gate = lock(&self.shared.gate);
        gate.calls.clear();
        gate.total = 0;
        gate.rate_limited = 0;
    }

    /// Every answer given so far (when recording), oldest first.
    pub fn answers(&self) -> Vec<Answer> {
        lock(&self.shared.gate).answers.iter().cloned().collect()
    }

    /// Forgets the recorded answers (to check only what follows).
    pub fn clear_answers(&self) {
        lock(&self.shared.gate).clear_answers();
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
