//! `PUT /v1/{servers,firewalls,volumes}/{id}`: rename and relabel, nothing else. Labels given
//! replace the whole set, as at Hetzner; a name must stay unique among its kind.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, parse_body};
use super::labels::{self, Labels};
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
        if !state.servers.contains_key(&id) {
            return Err(ApiError::not_found("server", id));
        }
        if let Some(name) = &update.name
            && state
                .servers
                .values()
                .any(|s| s.id != id && &s.name == name)
        {
            return Err(ApiError::uniqueness("name"));
        }
        let server = state
            .servers
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("server", id))?;
        if let Some(name) = update.name {
            server.name = name;
        }
        if let Some(labels) = update.labels {
            server.labels = labels;
        }
        let server = state
            .servers
            .get(&id)
            .ok_or_else(|| ApiError::not_found("server", id))?;
        Ok(Json(json!({"server": render::server(state, server)})).into_response())
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
        if let Some(name) = &update.name
            && state
                .firewalls
                .values()
                .any(|f| f.id != id && &f.name == name)
        {
            return Err(ApiError::uniqueness("name"));
        }
        let firewall = state
            .firewalls
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("firewall", id))?;
        if let Some(name) = update.name {
            firewall.name = name;
        }
        if let Some(labels) = update.labels {
            firewall.labels = labels;
        }
        Ok(Json(json!({"firewall": render::firewall(firewall)})).into_response())
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
        if let Some(name) = &update.name
            && state
                .volumes
                .values()
                .any(|v| v.id != id && &v.name == name)
        {
            return Err(ApiError::uniqueness("name"));
        }
        let volume = state
            .volumes
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found("volume", id))?;
        if let Some(name) = update.name {
            volume.name = name;
        }
        if let Some(labels) = update.labels {
            volume.labels = labels;
        }
        Ok(Json(json!({"volume": render::volume(volume)})).into_response())
    })
}
