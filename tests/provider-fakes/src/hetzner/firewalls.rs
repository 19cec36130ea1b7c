//! `/v1/firewalls`: create (rules validated, applied to servers), delete (refused while
//! applied), and the `set_rules`, `apply_to_resources`, `remove_from_resources` actions. Only
//! `server` targets are simulated; a `label_selector` target is refused rather than ignored.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, parse_body};
use super::labels::{self, Labels};
use super::reply::{actions_created, actions_json, answer_created, found, found_mut, required};
use super::state::{Effect, Firewall, Rule, State as Project};
use super::{Shared, parse_id, render};

const RULES_MAX: usize = 50;
const IPS_PER_RULE_MAX: usize = 100;
const FIREWALLS_PER_SERVER: usize = 5;

#[derive(Deserialize)]
pub(crate) struct RuleIn {
    description: Option<String>,
    direction: Option<String>,
    protocol: Option<String>,
    port: Option<String>,
    source_ips: Option<Vec<String>>,
    destination_ips: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub(crate) struct Target {
    #[serde(rename = "type")]
    kind: Option<String>,
    server: Option<ServerRef>,
}

#[derive(Deserialize)]
struct ServerRef {
    id: u64,
}

#[derive(Deserialize)]
pub(crate) struct CreateFirewall {
    name: Option<String>,
    labels: Option<Labels>,
    rules: Option<Vec<RuleIn>>,
    apply_to: Option<Vec<Target>>,
}

#[derive(Deserialize)]
pub(crate) struct SetRules {
    rules: Option<Vec<RuleIn>>,
}

#[derive(Deserialize)]
pub(crate) struct ApplyTo {
    apply_to: Option<Vec<Target>>,
}

#[derive(Deserialize)]
pub(crate) struct RemoveFrom {
    remove_from: Option<Vec<Target>>,
}

/// A CIDR in canonical form (`IPv6` compressed), or why it is not one.
fn canonical_cidr(text: &str) -> Result<String, String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("'{text}' is not a CIDR"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{text}' is not a CIDR"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("'{text}' has a bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("'{text}' has a bad prefix length"));
    }
    Ok(format!("{addr}/{prefix}"))
}

fn valid_port(port: &str) -> bool {
    let number = |p: &str| p.parse::<u16>().is_ok_and(|n| n >= 1);
    port == "any"
        || number(port)
        || port.split_once('-').is_some_and(|(a, b)| {
            number(a) && number(b) && a.parse::<u16>().ok() < b.parse::<u16>().ok()
        })
}

fn validate_rule(r: RuleIn) -> Result<Rule, String> {
    let direction = r.direction.ok_or("direction is required")?;
    if !matches!(direction.as_str(), "in" | "out") {
        return Err(format!("direction '{direction}' is not in or out"));
    }
    let protocol = r.protocol.ok_or("protocol is required")?;
    if !matches!(protocol.as_str(), "tcp" | "udp" | "icmp" | "esp" | "gre") {
        return Err(format!("protocol '{protocol}' is unknown"));
    }
    match (&r.port, matches!(protocol.as_str(), "tcp" | "udp")) {
        (None, true) => return Err(format!("port is required for {protocol}")),
        (Some(_), false) => return Err(format!("port is not allowed for {protocol}")),
        (Some(p), true) if !valid_port(p) => return Err(format!("port '{p}' is invalid")),
        _ => {}
    }
    if r.description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 255)
    {
        return Err("description is longer than 255 characters".to_owned());
    }
    let source = r.source_ips.unwrap_or_default();
    let destination = r.destination_ips.unwrap_or_default();
    let (needed, forbidden, name) = if direction == "in" {
        (&source, &destination, "source_ips")
    } else {
        (&destination, &source, "destination_ips")
    };
    if needed.is_empty() || !forbidden.is_empty() {
        return Err(format!(
            "a rule of direction {direction} takes {name}, and only those"
        ));
    }
    if needed.len() > IPS_PER_RULE_MAX {
        return Err(format!("at most {IPS_PER_RULE_MAX} addresses per rule"));
    }
    let canonical = |ips: &[String]| {
        ips.iter()
            .map(|ip| canonical_cidr(ip))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Rule {
        description: r.description,
        direction,
        protocol,
        port: r.port,
        source_ips: canonical(&source)?,
        destination_ips: canonical(&destination)?,
    })
}

fn validate_rules(rules: Vec<RuleIn>) -> Result<Vec<Rule>, ApiError> {
    if rules.len() > RULES_MAX {
        return Err(ApiError::invalid_field(
            "rules",
            format!("at most {RULES_MAX} rules"),
        ));
    }
    rules
        .into_iter()
        .map(validate_rule)
        .collect::<Result<_, _>>()
        .map_err(|m| ApiError::invalid_field("rules", m))
}

/// The server ids of `server` targets; refuses other target kinds and unknown servers.
fn server_targets(
    state: &Project,
    targets: Vec<Target>,
    field: &str,
) -> Result<Vec<u64>, ApiError> {
    let mut ids = Vec::new();
    for target in targets {
        match (target.kind.as_deref(), target.server) {
            (Some("server"), Some(server)) => {
                if !state.servers.contains_key(&server.id) {
                    return Err(ApiError::not_found("server", server.id));
                }
                ids.push(server.id);
            }
            (Some("label_selector"), _) => {
                return Err(ApiError::invalid_field(
                    field,
                    "label_selector targets are not simulated by this fake",
                ));
            }
            _ => {
                return Err(ApiError::invalid_field(
                    field,
                    "a target needs type server and server.id",
                ));
            }
        }
    }
    Ok(ids)
}

/// Applies the firewall to the servers; the caller has checked they exist.
fn apply(state: &mut Project, firewall: u64, servers: &[u64]) -> Result<(), ApiError> {
    for server in servers {
        let s = state
            .servers
            .get(server)
            .ok_or_else(|| ApiError::not_found("server", *server))?;
        if s.firewalls.contains(&firewall) {
            return Err(ApiError::unprocessable(
                "firewall_already_applied",
                format!("firewall {firewall} is already applied to server {server}"),
            ));
        }
        if s.firewalls.len() >= FIREWALLS_PER_SERVER {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "resource_limit_exceeded",
                format!("server {server} already has {FIREWALLS_PER_SERVER} firewalls"),
            ));
        }
    }
    for server in servers {
        if let Some(s) = state.servers.get_mut(server) {
            s.firewalls.push(firewall);
        }
        if let Some(f) = state.firewalls.get_mut(&firewall) {
            f.servers.push(*server);
        }
    }
    Ok(())
}

fn apply_action(
    state: &mut Project,
    now: tokio::time::Instant,
    command: &'static str,
    firewall: u64,
    servers: &[u64],
) -> u64 {
    let mut resources = vec![(firewall, "firewall")];
    resources.extend(servers.iter().map(|s| (*s, "server")));
    state.start_action(now, command, resources, Effect::None, 1, None)
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateFirewall = parse_body(&body)?;
    let name = req.name.unwrap_or_default();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid_field(
            "name",
            "name is required, at most 128 characters",
        ));
    }
    let labels = req.labels.unwrap_or_default();
    labels::validate(&labels).map_err(|m| ApiError::invalid_field("labels", m))?;
    let rules = validate_rules(req.rules.unwrap_or_default())?;
    shared.with(|state, now| {
        let servers = server_targets(state, req.apply_to.unwrap_or_default(), "apply_to")?;
        if state.firewalls.values().any(|f| f.name == name) {
            return Err(ApiError::uniqueness("name"));
        }
        let id = state.next_id();
        let created = state.clock.wall(now);
        state.firewalls.insert(
            id,
            Firewall {
                id,
                name,
                labels,
                rules,
                servers: Vec::new(),
                created,
            },
        );
        if let Err(e) = apply(state, id, &servers) {
            state.firewalls.remove(&id);
            return Err(e);
        }
        let actions = if servers.is_empty() {
            Vec::new()
        } else {
            vec![apply_action(state, now, "apply_firewall", id, &servers)]
        };
        let firewall = state
            .firewalls
            .get(&id)
            .map_or(Value::Null, render::firewall);
        let body = json!({"firewall": firewall, "actions": actions_json(state, &actions)});
        Ok(answer_created(&body))
    })
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, _| {
        let firewall = found(&state.firewalls, "firewall", id)?;
        if !firewall.servers.is_empty() {
            return Err(ApiError::unprocessable(
                "resource_in_use",
                format!(
                    "firewall {id} is still applied to {} server(s)",
                    firewall.servers.len()
                ),
            ));
        }
        state.firewalls.remove(&id);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

pub(crate) async fn set_rules(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let req: SetRules = parse_body(&body)?;
    let rules = validate_rules(req.rules.ok_or_else(|| {
        ApiError::invalid_field("rules", "rules is required (an empty list clears them)")
    })?)?;
    shared.with(|state, now| {
        let firewall = found_mut(&mut state.firewalls, "firewall", id)?;
        firewall.rules = rules;
        let servers = firewall.servers.clone();
        let mut actions = vec![state.start_action(
            now,
            "set_firewall_rules",
            vec![(id, "firewall")],
            Effect::None,
            1,
            None,
        )];
        if !servers.is_empty() {
            actions.push(apply_action(state, now, "apply_firewall", id, &servers));
        }
        Ok(actions_created(state, &actions))
    })
}

pub(crate) async fn apply_to(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let req: ApplyTo = parse_body(&body)?;
    let targets = required(req.apply_to, "apply_to")?;
    shared.with(|state, now| {
        if !state.firewalls.contains_key(&id) {
            return Err(ApiError::not_found("firewall", id));
        }
        let servers = server_targets(state, targets, "apply_to")?;
        apply(state, id, &servers)?;
        let action = apply_action(state, now, "apply_firewall", id, &servers);
        Ok(actions_created(state, &[action]))
    })
}

pub(crate) async fn remove_from(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let req: RemoveFrom = parse_body(&body)?;
    let targets = required(req.remove_from, "remove_from")?;
    shared.with(|state, now| {
        let firewall = found(&state.firewalls, "firewall", id)?;
        let applied = firewall.servers.clone();
        let servers = server_targets(state, targets, "remove_from")?;
        if let Some(s) = servers.iter().find(|s| !applied.contains(s)) {
            return Err(ApiError::unprocessable(
                "firewall_already_removed",
                format!("firewall {id} is not applied to server {s}"),
            ));
        }
        for server in &servers {
            if let Some(s) = state.servers.get_mut(server) {
                s.firewalls.retain(|f| *f != id);
            }
        }
        if let Some(f) = state.firewalls.get_mut(&id) {
            f.servers.retain(|s| !servers.contains(s));
        }
        let action = apply_action(state, now, "remove_firewall", id, &servers);
        Ok(actions_created(state, &[action]))
    })
}
