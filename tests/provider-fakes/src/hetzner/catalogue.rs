//! The catalogue's read-only routes: server types and locations (by name, a page at a time) and
//! images (by id, or listed by name, labels, type and architecture) — what a client checks
//! before it asks for a server.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::catalog::{LOCATIONS, SERVER_TYPES};
use super::error::ApiError;
use super::list::ListQuery;
use super::reply::single;
use super::{Shared, parse_id, render};

const SORTS: &[&str] = &["id", "name"];

/// One page of `(id, name, rendered)` rows under `key`, after the `name` filter.
fn listed(
    raw: Option<&str>,
    key: &str,
    rows: Vec<(u64, String, Value)>,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw, SORTS)?;
    let rows = rows
        .into_iter()
        .filter(|(_, name, _)| query.name.as_deref().is_none_or(|n| n == name))
        .collect();
    let (items, meta) = query.page(rows);
    Ok(Json(json!({key: items, "meta": meta})).into_response())
}

/// `GET /v1/server_types`.
pub(crate) async fn server_types(RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let rows = SERVER_TYPES
        .iter()
        .map(|t| (t.id, t.name.to_owned(), render::server_type(t)))
        .collect();
    listed(raw.as_deref(), "server_types", rows)
}

/// `GET /v1/locations`.
pub(crate) async fn locations(RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let rows = LOCATIONS
        .iter()
        .map(|l| (l.id, l.name.to_owned(), render::location(l)))
        .collect();
    listed(raw.as_deref(), "locations", rows)
}

/// Image types and architectures, as the `type` and `architecture` filters take them.
const IMAGE_TYPES: &[&str] = &["system", "app", "snapshot", "backup"];
const ARCHITECTURES: &[&str] = &["x86", "arm"];

/// `GET /v1/images`: the catalogue's system images and the registered snapshots, filtered by
/// `name` (exactly; snapshots have none), `label_selector`, `type` and `status` (each may
/// repeat) and `architecture`, a page at a time. Every image is `available`.
pub(crate) async fn images(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref(), ListQuery::RESOURCE_SORTS)?;
    let mut kinds = Vec::new();
    let mut architecture = None;
    for (key, value) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "type" if IMAGE_TYPES.contains(&value.as_ref()) => kinds.push(value.into_owned()),
            "type" => {
                return Err(ApiError::invalid_field(
                    "type",
                    format!("'{value}' is not an image type"),
                ));
            }
            "architecture" if ARCHITECTURES.contains(&value.as_ref()) => {
                architecture = Some(value.into_owned());
            }
            "architecture" => {
                return Err(ApiError::invalid_field(
                    "architecture",
                    format!("'{value}' is not an architecture"),
                ));
            }
            _ => {}
        }
    }
    shared.with(|state, _| {
        let rows = state
            .images
            .iter()
            .filter(|i| {
                query
                    .name
                    .as_deref()
                    .is_none_or(|n| i.name.as_deref() == Some(n))
                    && query.selector.as_ref().is_none_or(|s| s.matches(&i.labels))
                    && (kinds.is_empty() || kinds.iter().any(|k| k == i.kind))
                    && (query.status.is_empty() || query.status.iter().any(|s| s == "available"))
                    && architecture.as_deref().is_none_or(|a| a == i.architecture)
            })
            .map(|i| {
                let name = i.name.clone().unwrap_or_default();
                (i.id, name, render::image(i, state.clock.epoch()))
            })
            .collect();
        let (items, meta) = query.page(rows);
        Ok(Json(json!({"images": items, "meta": meta})).into_response())
    })
}

/// `GET /v1/images/{id}`: a system image of the catalogue or a registered snapshot.
pub(crate) async fn image(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, _| {
        let image = state
            .images
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| ApiError::not_found("image", id))?;
        Ok(single("image", &render::image(image, state.clock.epoch())))
    })
}
