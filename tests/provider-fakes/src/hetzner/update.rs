//! `PUT /v1/{servers,firewalls,volumes}/{id}`: rename and relabel, nothing else. Labels given
//! replace the whole set, as at Hetzner; a name must stay unique among its kind.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::error::{ApiError, parse_body};
use super::labels::{self, Labels};
use super::reply::{Named, found, found_mut, single};
use super::servers::valid_hostname;
use super::{Shared, parse_id, render};

#[derive(Deserialize)]
pub(crate) struct Update {
    name: Option<String>,
    labels: Option<Labels>,
}

fn checked(body: &[u8]) -> Result<Update, ApiError> {
    let update: Update = parse_body(body)?;
    if let Some(labels) = &update.labels {
        labels::validate(labels).map_err(|m| ApiError::invalid_field("labels", m))?;
    }
    if update.name.as_deref() == Some("") {
        return Err(ApiError::invalid_field("name", "name must not be empty"));
    }
    Ok(update)
}

/// Renames and relabels the `kind` with this id; a new name must be unique among its kind.
fn apply<'a, T: Named>(
    items: &'a mut BTreeMap<u64, T>,
    kind: &str,
    id: u64,
    update: Update,
) -> Result<&'a T, ApiError> {
    if let Some(name) = &update.name
        && items
            .iter()
            .any(|(other, item)| *other != id && item.name() == name)
    {
        return Err(ApiError::uniqueness("name"));
    }
    let item = found_mut(items, kind, id)?;
    if let Some(name) = update.name {
        *item.name_mut() = name;
    }
    if let Some(labels) = update.labels {
        *item.labels_mut() = labels;
    }
    Ok(item)
}

pub(crate) async fn server(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let update = checked(&body)?;
    if update.name.as_deref().is_some_and(|n| !valid_hostname(n)) {
        return Err(ApiError::invalid_field(
            "name",
            "not a valid hostname (RFC 1123)",
        ));
    }
    shared.with(|state, _| {
        // A server that does not exist is 404 before its new name is checked.
        found(&state.servers, "server", id)?;
        apply(&mut state.servers, "server", id, update)?;
        let server = found(&state.servers, "server", id)?;
        Ok(single("server", &render::server(state, server)))
    })
}

pub(crate) async fn firewall(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let update = checked(&body)?;
    if update
        .name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 128)
    {
        return Err(ApiError::invalid_field("name", "at most 128 characters"));
    }
    shared.with(|state, _| {
        let firewall = apply(&mut state.firewalls, "firewall", id, update)?;
        Ok(single("firewall", &render::firewall(firewall)))
    })
}

pub(crate) async fn volume(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let update = checked(&body)?;
    shared.with(|state, _| {
        let volume = apply(&mut state.volumes, "volume", id, update)?;
        Ok(single("volume", &render::volume(volume)))
    })
}
