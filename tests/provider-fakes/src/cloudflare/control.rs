//! The test's handle on a running fake: what exists in the account and the zone, how many calls
//! each route took, the faults to inject, and a simulated cloudflared. It never goes through HTTP,
//! so using it spends no limit and counts no call.

use std::time::Duration;

use axum::http::Method;
use serde_json::Value;

use super::{Shared, lock, tunnels};
use crate::common::faults;

/// What an injected fault does to a matching call; its error code is Cloudflare's (1022, …).
pub type Fault = faults::Fault<u32>;

/// Inspection and fault injection for one running fake, and a simulated cloudflared; cheap to
/// clone. Its faults, call counts and answers are `common::control::Control`'s; the rest
/// is Cloudflare's.
pub type Control = crate::common::control::Control<Shared>;

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

impl Control {
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

    /// A new limit of `limit` requests per `window`, starting fresh (any block lifted).
    pub fn set_rate_limit(&self, limit: u32, window: Duration) {
        lock(&self.shared.gate).limiter = super::gate::Window::new(limit, window);
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
