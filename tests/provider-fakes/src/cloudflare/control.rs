//! The test's handle on a running fake: what exists in the account and the zone, how many calls
//! each route took, the faults to inject, and a simulated cloudflared. It never goes through HTTP,
//! so using it spends no limit and counts no call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::gate::FaultEntry;
use super::{ROUTES, Shared, lock, tunnels};

/// What an injected fault does to a matching call.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this HTTP status and Cloudflare error code (in the envelope) instead of doing
    /// the call.
    Error {
        status: u16,
        code: u32,
        message: String,
    },
    /// Wait this long, then do the call and answer normally.
    Stall(Duration),
    /// Do the call at once, then wait this long before answering (a client that times out
    /// meanwhile has had its call done all the same).
    StallAnswer(Duration),
    /// Do the call (the tunnel is created, the record deleted, …), then lose the answer.
    Crash(CrashMode),
}

/// How a crash between "done" and "answered" looks to the client.
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
    /// The route's path template, e.g. `/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}`.
    pub template: String,
    pub path: String,
    pub status: u16,
    pub body: Vec<u8>,
    /// The answer came from an injected fault rather than from the API's logic.
    pub injected: bool,
}

/// One ingress rule of a tunnel's remote configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRuleView {
    pub hostname: Option<String>,
    pub path: Option<String>,
    pub service: String,
}

#[derive(Clone, Debug)]
pub struct TunnelView {
    pub id: String,
    pub name: String,
    /// Soft-deleted (`deleted_at` set).
    pub deleted: bool,
    pub config_src: String,
    /// `inactive`, `healthy`, `degraded` or `down`.
    pub status: String,
    /// Live edge connections of all its connectors.
    pub connections: usize,
    /// The ingress rules of its remote configuration, `None` until one is put.
    pub ingress: Option<Vec<IngressRuleView>>,
    /// The version of the remote configuration (0 until one is put).
    pub config_version: u64,
}

#[derive(Clone, Debug)]
pub struct DnsRecordView {
    pub id: String,
    /// Fully qualified, e.g. `agent-1.agents.example.test`.
    pub name: String,
    /// `CNAME`, `A`, …
    pub kind: String,
    pub content: String,
    pub proxied: bool,
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
    /// `/client/v4/accounts/{account_id}/cfd_tunnel`) meet `fault`. Faults queue up per route in
    /// the order injected.
    ///
    /// # Panics
    /// If the route is not one the fake serves: a typo would otherwise inject nothing.
    pub fn inject(&self, method: &Method, template: &str, times: u32, fault: Fault) {
        assert!(
            ROUTES
                .iter()
                .any(|(m, t)| *m == method.as_str() && *t == template),
            "the Cloudflare fake serves no route {method} {template}"
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

    /// The next `times` matching calls answer `status` with Cloudflare error `code`.
    pub fn fail_next(&self, method: &Method, template: &str, times: u32, status: u16, code: u32) {
        self.inject(
            method,
            template,
            times,
            Fault::Error {
                status,
                code,
                message: format!("injected error {code}"),
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

    /// A new limit of `limit` requests per `window`, starting fresh (any block lifted).
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        let mut gate = lock(&self.shared.gate);
        gate.window.limit = limit;
        gate.window.length = window;
        gate.window.start = None;
        gate.window.used = 0;
        gate.window.blocked_until = None;
    }

    /// Requests left in the current window (0 while the token is blocked).
    pub fn rate_limit_remaining(&self) -> u32 {
        lock(&self.shared.gate).window.remaining(Instant::now())
    }

    /// Calls answered 429 because the limit was spent (injected 429s are not counted here).
    pub fn rate_limited_calls(&self) -> u64 {
        lock(&self.shared.gate).rate_limited
    }

    /// Calls made to one route, whatever their answer. Calls to paths the fake does not serve
    /// count under the template `<unmatched>`.
    pub fn calls(&self, method: &Method, template: &str) -> u64 {
        lock(&self.shared.gate)
            .calls
            .get(&(method.as_str().to_owned(), template.to_owned()))
            .copied()
            .unwrap_or(0)
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

    /// A cloudflared runs with this tunnel's token and opens `connections` edge connections
    /// (cloudflared opens four; fewer is `degraded`). Returns the connector's id (its
    /// `client_id`), or `None` when the tunnel is unknown or deleted. Until the connections are
    /// cleaned up (`DELETE …/connections`) or [`Control::disconnect`] is called, deleting the
    /// tunnel is refused with 1022.
    pub fn connect(&self, tunnel_id: &str, connections: usize) -> Option<String> {
        self.shared
            .with(|state, now| state.connect(tunnel_id, connections, now))
    }

    /// Every cloudflared of this tunnel stops and its connections close (status `down`).
    /// Returns how many connectors went.
    pub fn disconnect(&self, tunnel_id: &str) -> usize {
        self.shared
            .with(|state, now| state.disconnect(tunnel_id, None, now))
    }

    /// The token cloudflared would be given for this tunnel (base64 of `{"a","t","s"}`).
    pub fn tunnel_token(&self, tunnel_id: &str) -> Option<String> {
        self.shared.with(|state, _| {
            state
                .tunnel(tunnel_id)
                .map(|t| tunnels::token(&self.shared.account_id, t))
        })
    }

    /// Every tunnel, deleted ones included, oldest first.
    pub fn tunnels(&self) -> Vec<TunnelView> {
        self.shared.with(|state, _| {
            state
                .tunnels
                .values()
                .map(|t| TunnelView {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    deleted: t.deleted.is_some(),
                    config_src: t.config_src.clone(),
                    status: t.status().to_owned(),
                    connections: t.live_connections(),
                    ingress: t.config.as_ref().map(ingress),
                    config_version: t.config_version,
                })
                .collect()
        })
    }

    /// The tunnels not deleted.
    pub fn live_tunnels(&self) -> Vec<TunnelView> {
        self.tunnels().into_iter().filter(|t| !t.deleted).collect()
    }

    /// Every DNS record of the zone, oldest first.
    pub fn dns_records(&self) -> Vec<DnsRecordView> {
        self.shared.with(|state, _| {
            state
                .records
                .values()
                .map(|r| DnsRecordView {
                    id: r.id.clone(),
                    name: r.name.clone(),
                    kind: r.kind.clone(),
                    content: r.content.clone(),
                    proxied: r.proxied,
                })
                .collect()
        })
    }
}

fn ingress(config: &Value) -> Vec<IngressRuleView> {
    let text = |rule: &Value, key: &str| rule.get(key).and_then(Value::as_str).map(str::to_owned);
    config
        .get("ingress")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|rule| IngressRuleView {
                    hostname: text(rule, "hostname"),
                    path: text(rule, "path"),
                    service: text(rule, "service").unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}
