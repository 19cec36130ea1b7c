//! `/v1/servers`: create (validated against the catalogue, name unique, firewalls applied and
//! volumes attached), delete, and the power actions. A second power action while one runs is 423
//! `locked`, as at Hetzner. Listing and getting servers, firewalls and volumes is
//! [`super::reply`]'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::catalog::{self, Image, Location, ServerType};
use super::error::{ApiError, parse_body};
use super::labels::{self, Labels};
use super::reply::{action_created, answer_created, found_mut, single};
use super::state::{Effect, Server, State as Project};
use super::{Shared, parse_id, render};

/// Hetzner's limit on `user_data`.
const USER_DATA_MAX: usize = 32 * 1024;
const FIREWALLS_PER_SERVER: usize = 5;
pub(crate) const VOLUMES_PER_SERVER: usize = 16;

#[derive(Deserialize)]
pub(crate) struct CreateServer {
    name: Option<String>,
    server_type: Option<String>,
    image: Option<Value>,
    location: Option<String>,
    datacenter: Option<String>,
    start_after_create: Option<bool>,
    ssh_keys: Option<Vec<Value>>,
    user_data: Option<String>,
    labels: Option<Labels>,
    volumes: Option<Vec<u64>>,
    networks: Option<Vec<u64>>,
    firewalls: Option<Vec<FirewallRef>>,
    public_net: Option<PublicNet>,
}

#[derive(Deserialize)]
struct FirewallRef {
    firewall: u64,
}

#[derive(Deserialize)]
struct PublicNet {
    enable_ipv4: Option<bool>,
    enable_ipv6: Option<bool>,
}

/// RFC 1123 hostname, as Hetzner requires of server names.
pub(crate) fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn find_image(images: &[Image], wanted: &Value, architecture: &str) -> Option<Image> {
    let text = match wanted {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if let Ok(id) = text.parse::<u64>() {
        return images
            .iter()
            .find(|i| i.id == id && i.architecture == architecture)
            .cloned();
    }
    images
        .iter()
        .find(|i| i.name.as_deref() == Some(text.as_str()) && i.architecture == architecture)
        .cloned()
}

/// The location asked for by name, by (deprecated) datacenter, or the default one.
fn resolve_location(
    location: Option<&str>,
    datacenter: Option<&str>,
    bad: &mut Vec<(&'static str, String)>,
) -> Option<&'static Location> {
    match (location, datacenter) {
        (Some(_), Some(_)) => {
            bad.push((
                "location",
                "location and datacenter are mutually exclusive".to_owned(),
            ));
            None
        }
        (Some(l), None) => catalog::location(l).or_else(|| {
            bad.push(("location", format!("location '{l}' not found")));
            None
        }),
        (None, Some(d)) => catalog::LOCATIONS
            .iter()
            .find(|l| l.datacenter_name == d)
            .or_else(|| {
                bad.push(("datacenter", format!("datacenter '{d}' not found")));
                None
            }),
        (None, None) => catalog::location(catalog::DEFAULT_LOCATION),
    }
}

/// A create request checked against everything that needs no project state.
struct Checked {
    bad: Vec<(&'static str, String)>,
    name: String,
    server_type: Option<&'static ServerType>,
    location: Option<&'static Location>,
    image: Option<Value>,
    labels: Labels,
    user_data: Option<String>,
    firewalls: Vec<u64>,
    volumes: Vec<u64>,
    start: bool,
    root_password: bool,
    /// Whether the server gets a public `IPv4` and `IPv6` address.
    public: (bool, bool),
    /// The request's `public_net`, as sent.
    public_requested: Option<(Option<bool>, Option<bool>)>,
}

fn check(req: CreateServer) -> Checked {
    let mut bad: Vec<(&'static str, String)> = Vec::new();
    let name = req.name.unwrap_or_default();
    if name.is_empty() {
        bad.push(("name", "is required".to_owned()));
    } else if !valid_hostname(&name) {
        bad.push((
            "name",
            format!("'{name}' is not a valid hostname (RFC 1123)"),
        ));
    }
    let server_type = match req.server_type.as_deref() {
        None => {
            bad.push(("server_type", "is required".to_owned()));
            None
        }
        Some(t) => catalog::server_type(t).or_else(|| {
            bad.push(("server_type", format!("server type '{t}' not found")));
            None
        }),
    };
    let location = resolve_location(req.location.as_deref(), req.datacenter.as_deref(), &mut bad);
    if let (Some(t), Some(l)) = (server_type, location)
        && !t.locations.contains(&l.name)
    {
        bad.push((
            "server_type",
            format!("server type '{}' is not available in '{}'", t.name, l.name),
        ));
    }
    if req.image.is_none() {
        bad.push(("image", "is required".to_owned()));
    }
    if req
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > USER_DATA_MAX)
    {
        bad.push((
            "user_data",
            format!("user_data is longer than {USER_DATA_MAX} bytes"),
        ));
    }
    let labels = req.labels.unwrap_or_default();
    if let Err(m) = labels::validate(&labels) {
        bad.push(("labels", m));
    }
    if req.networks.as_ref().is_some_and(|n| !n.is_empty()) {
        bad.push((
            "networks",
            "private networks are not simulated by this fake".to_owned(),
        ));
    }
    let firewalls: Vec<u64> = req
        .firewalls
        .unwrap_or_default()
        .iter()
        .map(|f| f.firewall)
        .collect();
    if firewalls.len() > FIREWALLS_PER_SERVER {
        bad.push((
            "firewalls",
            format!("a server takes at most {FIREWALLS_PER_SERVER} firewalls"),
        ));
    }
    let volumes = req.volumes.unwrap_or_default();
    if volumes.len() > VOLUMES_PER_SERVER {
        bad.push((
            "volumes",
            format!("a server takes at most {VOLUMES_PER_SERVER} volumes"),
        ));
    }
    let public_requested = req.public_net.map(|p| (p.enable_ipv4, p.enable_ipv6));
    let public = public_requested.map_or((true, true), |(v4, v6)| {
        (v4.unwrap_or(true), v6.unwrap_or(true))
    });
    Checked {
        bad,
        name,
        server_type,
        location,
        image: req.image,
        labels,
        user_data: req.user_data,
        firewalls,
        volumes,
        start: req.start_after_create.unwrap_or(true),
        root_password: req.ssh_keys.as_ref().is_none_or(Vec::is_empty),
        public,
        public_requested,
    }
}

/// The checks that need the project: the image for the type's architecture, the firewalls and
/// volumes named, the unique name.
fn check_in_project(state: &Project, c: &mut Checked) -> Result<Image, ApiError> {
    let image = match (&c.image, c.server_type) {
        (Some(wanted), Some(t)) => {
            find_image(&state.images, wanted, t.architecture).or_else(|| {
                c.bad.push((
                    "image",
                    format!(
                        "image {wanted} not found for architecture {}",
                        t.architecture
                    ),
                ));
                None
            })
        }
        _ => None,
    };
    for id in &c.firewalls {
        if !state.firewalls.contains_key(id) {
            c.bad
                .push(("firewalls", format!("firewall {id} not found")));
        }
    }
    for id in &c.volumes {
        match state.volumes.get(id) {
            None => c.bad.push(("volumes", format!("volume {id} not found"))),
            Some(v) if c.location.is_some_and(|l| l.name != v.location.name) => {
                c.bad
                    .push(("volumes", format!("volume {id} is in another location")));
            }
            Some(_) => {}
        }
    }
    let (Some(image), true) = (image, c.bad.is_empty()) else {
        return Err(ApiError::invalid(&c.bad));
    };
    if state.servers.values().any(|s| s.name == c.name) {
        return Err(ApiError::uniqueness("name"));
    }
    if let Some(v) = c
        .volumes
        .iter()
        .filter_map(|id| state.volumes.get(id))
        .find(|v| v.server.is_some())
    {
        return Err(ApiError::unprocessable(
            "volume_already_attached",
            format!("volume {} is already attached", v.id),
        ));
    }
    Ok(image)
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut c = check(parse_body::<CreateServer>(&body)?);
    shared.with(|state, now| {
        let image = check_in_project(state, &mut c)?;
        let (Some(server_type), Some(location)) = (c.server_type, c.location) else {
            return Err(ApiError::invalid(&c.bad));
        };
        let id = state.next_id();
        let created = state.clock.wall(now);
        for fw in &c.firewalls {
            if let Some(f) = state.firewalls.get_mut(fw) {
                f.servers.push(id);
            }
        }
        for v in &c.volumes {
            if let Some(v) = state.volumes.get_mut(v) {
                v.server = Some(id);
            }
        }
        let server = Server {
            id,
            name: c.name,
            labels: c.labels,
            status: "initializing",
            server_type,
            location,
            image,
            created,
            firewalls: c.firewalls,
            volumes: c.volumes.clone(),
            user_data: c.user_data,
            ipv4: c.public.0,
            ipv6: c.public.1,
            public_net_requested: c.public_requested,
            off_at: None,
        };
        state.servers.insert(id, server);
        let create_effect = if c.start {
            Effect::None
        } else {
            Effect::ServerStatus { server: id, success: "off", failure: "off" }
        };
        let action = state.start_action(now, "create_server", vec![(id, "server")], create_effect, 1, None);
        let mut next = Vec::new();
        for v in &c.volumes {
            let resources = vec![(*v, "volume"), (id, "server")];
            next.push(state.start_action(now, "attach_volume", resources, Effect::None, 2, Some(action)));
        }
        if c.start {
            let effect = Effect::ServerStatus { server: id, success: "running", failure: "off" };
            next.push(state.start_action(now, "start_server", vec![(id, "server")], effect, 2, Some(action)));
        }
        let server = state.servers.get(&id).map_or(Value::Null, |s| render::server(state, s));
        let body = json!({
            "server": server,
            "action": render::action_by_id(state, action),
            "next_actions": next.iter().map(|a| render::action_by_id(state, *a)).collect::<Vec<_>>(),
            "root_password": c.root_password.then(|| format!("fake-root-password-{id}")),
        });
        Ok(answer_created(&body))
    })
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, now| {
        let server = found_mut(&mut state.servers, "server", id)?;
        server.status = "deleting";
        // Firewalls and volumes are let go when the deletion finishes, not before.
        let action = state.start_action(
            now,
            "delete_server",
            vec![(id, "server")],
            Effect::DeleteServer { server: id },
            1,
            None,
        );
        Ok(single("action", &render::action_by_id(state, action)))
    })
}

fn power(shared: &Shared, raw: &str, command: &'static str) -> Result<Response, ApiError> {
    let id = parse_id(raw)?;
    shared.with(|state, now| {
        let busy = state.server_busy(id);
        let server = found_mut(&mut state.servers, "server", id)?;
        if busy || server.status == "deleting" {
            return Err(ApiError::locked("server"));
        }
        let previous = server.status;
        // (status meanwhile, status after) of the actions that switch power at once.
        let switch = match command {
            "start_server" => Some(("starting", "running")),
            "stop_server" => Some(("stopping", "off")),
            _ => None,
        };
        let effect = match switch {
            Some((during, success)) => {
                server.status = during;
                server.off_at = None;
                Effect::ServerStatus {
                    server: id,
                    success,
                    failure: previous,
                }
            }
            None => Effect::Shutdown { server: id },
        };
        let action = state.start_action(now, command, vec![(id, "server")], effect, 1, None);
        Ok(action_created(state, action))
    })
}

pub(crate) async fn poweron(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    power(&shared, &raw, "start_server")
}

pub(crate) async fn poweroff(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    power(&shared, &raw, "stop_server")
}

pub(crate) async fn shutdown(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    power(&shared, &raw, "shutdown_server")
}
