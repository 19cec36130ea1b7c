//! What the handlers share in building their answers: a resource by id or its 404, `201
//! Created` with the actions a call started, one page of a list, and the name and labels every
//! resource has.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::labels::Labels;
use super::list::ListQuery;
use super::render;
use super::state::{Firewall, Server, State, Volume};

/// A resource with a name and labels: what lists filter on and `PUT` changes.
pub(crate) trait Named {
    fn name(&self) -> &str;
    fn labels(&self) -> &Labels;
    fn name_mut(&mut self) -> &mut String;
    fn labels_mut(&mut self) -> &mut Labels;
}

macro_rules! named {
    ($($kind:ty),*) => {$(
        impl Named for $kind {
            fn name(&self) -> &str {
                &self.name
            }
            fn labels(&self) -> &Labels {
                &self.labels
            }
            fn name_mut(&mut self) -> &mut String {
                &mut self.name
            }
            fn labels_mut(&mut self) -> &mut Labels {
                &mut self.labels
            }
        }
    )*};
}

named!(Server, Firewall, Volume);

/// The `kind` with this id, or Hetzner's 404.
pub(crate) fn found<'a, T>(
    items: &'a BTreeMap<u64, T>,
    kind: &str,
    id: u64,
) -> Result<&'a T, ApiError> {
    items.get(&id).ok_or_else(|| ApiError::not_found(kind, id))
}

/// [`found`], to change it.
pub(crate) fn found_mut<'a, T>(
    items: &'a mut BTreeMap<u64, T>,
    kind: &str,
    id: u64,
) -> Result<&'a mut T, ApiError> {
    items
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found(kind, id))
}

/// `200 OK` with `value` under `key` (`{"server": …}`).
pub(crate) fn single(key: &str, value: &Value) -> Response {
    Json(json!({ key: value })).into_response()
}

/// A field the call must carry, or Hetzner's `invalid_input` naming it.
pub(crate) fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid_field(field, format!("{field} is required")))
}

/// `201 Created` with `body`.
pub(crate) fn answer_created(body: &Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `201 Created` with the one action a call started.
pub(crate) fn action_created(state: &State, action: u64) -> Response {
    answer_created(&json!({"action": render::action_by_id(state, action)}))
}

/// The actions with these ids, rendered.
pub(crate) fn actions_json(state: &State, ids: &[u64]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| render::action_by_id(state, *id))
            .collect(),
    )
}

/// `201 Created` with the actions a call started.
pub(crate) fn actions_created(state: &State, actions: &[u64]) -> Response {
    answer_created(&json!({"actions": actions_json(state, actions)}))
}

/// A list call's answer: the `items` the query's name and label selector match and `keep` lets
/// through, one page of them rendered under `key`, and `meta`. Only the page is rendered: a list
/// of thousands costs what a page costs.
pub(crate) fn page<T: Named>(
    query: &ListQuery,
    key: &str,
    items: &BTreeMap<u64, T>,
    keep: impl Fn(&T) -> bool,
    render: impl Fn(&T) -> Value,
) -> Response {
    let rows = items
        .iter()
        .filter(|(_, item)| query.keeps(item.name(), item.labels()) && keep(item))
        .map(|(id, item)| (*id, item.name().to_owned(), *id))
        .collect();
    let (page, meta) = query.page(rows);
    let rendered: Vec<Value> = page
        .iter()
        .filter_map(|id| items.get(id))
        .map(render)
        .collect();
    Json(json!({key: rendered, "meta": meta})).into_response()
}
