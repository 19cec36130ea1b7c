//! `/v1/volumes`: create (in a location or attached to a server), delete (refused while
//! attached), and the attach and detach actions. The device path is Hetzner's
//! `/dev/disk/by-id/scsi-0HC_Volume_<id>`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::catalog;
use super::error::{ApiError, parse_body};
use super::labels::{self, Labels};
use super::reply::{action_created, answer_created, found, found_mut, required};
use super::servers::VOLUMES_PER_SERVER;
use super::state::{Effect, State as Project, Volume};
use super::{Shared, parse_id, render};

const SIZE_MIN: u64 = 10;
const SIZE_MAX: u64 = 10_240;

#[derive(Deserialize)]
pub(crate) struct CreateVolume {
    name: Option<String>,
    size: Option<u64>,
    location: Option<String>,
    server: Option<u64>,
    automount: Option<bool>,
    format: Option<String>,
    labels: Option<Labels>,
}

#[derive(Deserialize)]
pub(crate) struct Attach {
    server: Option<u64>,
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateVolume = parse_body(&body)?;
    let mut bad: Vec<(&str, String)> = Vec::new();
    let name = req.name.unwrap_or_default();
    if name.is_empty() {
        bad.push(("name", "is required".to_owned()));
    }
    match req.size {
        None => bad.push(("size", "is required".to_owned())),
        Some(s) if !(SIZE_MIN..=SIZE_MAX).contains(&s) => {
            bad.push((
                "size",
                format!("size must be between {SIZE_MIN} and {SIZE_MAX} GB"),
            ));
        }
        Some(_) => {}
    }
    if req
        .format
        .as_deref()
        .is_some_and(|f| !matches!(f, "ext4" | "xfs"))
    {
        bad.push(("format", "format must be ext4 or xfs".to_owned()));
    }
    if req.automount == Some(true) && req.server.is_none() {
        bad.push(("automount", "automount needs a server".to_owned()));
    }
    let labels = req.labels.unwrap_or_default();
    if let Err(m) = labels::validate(&labels) {
        bad.push(("labels", m));
    }
    shared.with(|state, now| {
        let location = match (req.location.as_deref(), req.server) {
            (Some(_), Some(_)) | (None, None) => {
                bad.push(("location", "give either location or server".to_owned()));
                None
            }
            (Some(l), None) => catalog::location(l).or_else(|| {
                bad.push(("location", format!("location '{l}' not found")));
                None
            }),
            (None, Some(s)) => match state.servers.get(&s) {
                Some(server) if server.volumes.len() >= VOLUMES_PER_SERVER => {
                    bad.push(("server", format!("server {s} has the most volumes it can take")));
                    None
                }
                Some(server) => Some(server.location),
                None => return Err(ApiError::not_found("server", s)),
            },
        };
        let (Some(location), true) = (location, bad.is_empty()) else {
            return Err(ApiError::invalid(&bad));
        };
        if state.volumes.values().any(|v| v.name == name) {
            return Err(ApiError::uniqueness("name"));
        }
        let id = state.next_id();
        let created = state.clock.wall(now);
        let size = req.size.unwrap_or(SIZE_MIN);
        let volume = Volume { id, name, labels, size, location, server: req.server, format: req.format, created };
        state.volumes.insert(id, volume);
        let action = state.start_action(now, "create_volume", vec![(id, "volume")], Effect::None, 1, None);
        let mut next = Vec::new();
        if let Some(server) = req.server {
            if let Some(s) = state.servers.get_mut(&server) {
                s.volumes.push(id);
            }
            next.push(state.start_action(now, "attach_volume", vec![(id, "volume"), (server, "server")], Effect::None, 1, Some(action)));
        }
        let volume = state.volumes.get(&id).map_or(Value::Null, render::volume);
        let body = json!({
            "volume": volume,
            "action": render::action_by_id(state, action),
            "next_actions": next.iter().map(|a| render::action_by_id(state, *a)).collect::<Vec<_>>(),
        });
        Ok(answer_created(&body))
    })
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, _| {
        let volume = found(&state.volumes, "volume", id)?;
        if let Some(server) = volume.server {
            // Guess: Hetzner's exact code for this refusal is not documented; resource_in_use is
            // the code it uses for the same refusal on firewalls.
            return Err(ApiError::unprocessable(
                "resource_in_use",
                format!("volume {id} is attached to server {server}"),
            ));
        }
        state.volumes.remove(&id);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

pub(crate) async fn attach(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let req: Attach = parse_body(&body)?;
    let server = required(req.server, "server")?;
    shared.with(|state, now| {
        let busy = state.volume_busy(id) || state.server_busy(server);
        let volume = found(&state.volumes, "volume", id)?;
        let s = found(&state.servers, "server", server)?;
        if busy {
            return Err(ApiError::locked("volume"));
        }
        if volume.server.is_some() {
            return Err(ApiError::unprocessable(
                "volume_already_attached",
                format!("volume {id} is already attached"),
            ));
        }
        if volume.location.name != s.location.name {
            return Err(ApiError::invalid_field(
                "server",
                "the server is in another location than the volume",
            ));
        }
        if s.volumes.len() >= VOLUMES_PER_SERVER {
            return Err(ApiError::invalid_field(
                "server",
                "the server has the most volumes it can take",
            ));
        }
        if let Some(v) = state.volumes.get_mut(&id) {
            v.server = Some(server);
        }
        if let Some(s) = state.servers.get_mut(&server) {
            s.volumes.push(id);
        }
        Ok(volume_action(state, now, "attach_volume", id, server))
    })
}

/// Starts the attach or detach action of volume `id` and `server`, and answers it.
fn volume_action(
    state: &mut Project,
    now: Instant,
    command: &'static str,
    id: u64,
    server: u64,
) -> Response {
    let action = state.start_action(
        now,
        command,
        vec![(id, "volume"), (server, "server")],
        Effect::None,
        1,
        None,
    );
    action_created(state, action)
}

pub(crate) async fn detach(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, now| {
        let busy = state.volume_busy(id);
        let volume = found_mut(&mut state.volumes, "volume", id)?;
        if busy {
            return Err(ApiError::locked("volume"));
        }
        // Guess: detaching a detached volume is refused (the code is not documented).
        let server = volume.server.take().ok_or_else(|| {
            ApiError::unprocessable("invalid_input", format!("volume {id} is not attached"))
        })?;
        if let Some(s) = state.servers.get_mut(&server) {
            s.volumes.retain(|v| *v != id);
        }
        Ok(volume_action(state, now, "detach_volume", id, server))
    })
}
