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
use super::reply::{Kind, Named, found, found_mut, single};
use super::servers::valid_hostname;
use super::state::{Firewall, Server, State as Project, Volume};
use super::{Shared, parse_id};

#[derive(Deserialize)]
pub(crate) struct Update {
    name: Option<String>,
    labels: Option<Labels>,
}

/// A kind of resource `PUT` renames and relabels.
pub(crate) trait Renamed: Kind + Named {
    /// Whether an unknown id is 404 before a taken name is 409 (servers), or after.
    const NOT_FOUND_FIRST: bool;
    fn items_mut(state: &mut Project) -> &mut BTreeMap<u64, Self>;
    /// The kind's own rule for a new name.
    fn check_name(name: &str) -> Result<(), ApiError>;
}

impl Renamed for Server {
    const NOT_FOUND_FIRST: bool = true;
    fn items_mut(state: &mut Project) -> &mut BTreeMap<u64, Server> {
        &mut state.servers
    }
    fn check_name(name: &str) -> Result<(), ApiError> {
        if valid_hostname(name) {
            Ok(())
        } else {
            Err(ApiError::invalid_field(
                "name",
                "not a valid hostname (RFC 1123)",
            ))
        }
    }
}

impl Renamed for Firewall {
    const NOT_FOUND_FIRST: bool = false;
    fn items_mut(state: &mut Project) -> &mut BTreeMap<u64, Firewall> {
        &mut state.firewalls
    }
    fn check_name(name: &str) -> Result<(), ApiError> {
        if name.chars().count() > 128 {
            return Err(ApiError::invalid_field("name", "at most 128 characters"));
        }
        Ok(())
    }
}

impl Renamed for Volume {
    const NOT_FOUND_FIRST: bool = false;
    fn items_mut(state: &mut Project) -> &mut BTreeMap<u64, Volume> {
        &mut state.volumes
    }
    fn check_name(_: &str) -> Result<(), ApiError> {
        Ok(())
    }
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

/// Renames and relabels the `K` with this id; a new name must be unique among its kind.
fn apply<K: Renamed>(state: &mut Project, id: u64, update: Update) -> Result<(), ApiError> {
    if K::NOT_FOUND_FIRST {
        found(K::items(state), K::KIND, id)?;
    }
    let items = K::items_mut(state);
    if let Some(name) = &update.name
        && items
            .iter()
            .any(|(other, item)| *other != id && item.name() == name)
    {
        return Err(ApiError::uniqueness("name"));
    }
    let item = found_mut(items, K::KIND, id)?;
    if let Some(name) = update.name {
        *item.name_mut() = name;
    }
    if let Some(labels) = update.labels {
        *item.labels_mut() = labels;
    }
    Ok(())
}

/// `PUT /v1/{kind}s/{id}`.
pub(crate) async fn update<K: Renamed>(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let update = checked(&body)?;
    if let Some(name) = &update.name {
        K::check_name(name)?;
    }
    shared.with(|state, _| {
        apply::<K>(state, id, update)?;
        let item = found(K::items(state), K::KIND, id)?;
        Ok(single(K::KIND, &item.render(state)))
    })
}
