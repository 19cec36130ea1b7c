//! What the handlers share in building their answers: a resource by id or its 404, `201
//! Created` with the actions a call started, one page of a list, and the name and labels every
//! resource has.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::labels::Labels;
use super::list::ListQuery;
use super::state::{Action, Firewall, Server, State as Project, Volume};
use super::{Shared, parse_id, render};

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

/// A kind of resource the fake serves one by one at `/v1/{kind}s/{id}`.
pub(crate) trait Kind: Sized + 'static {
    /// Its name in answers and errors: `server`, `firewall`, …
    const KIND: &'static str;
    fn items(state: &Project) -> &BTreeMap<u64, Self>;
    fn render(&self, state: &Project) -> Value;
}

/// A kind of resource the fake also lists, at `/v1/{kind}s`.
pub(crate) trait Listed: Kind + Named {
    /// Its name in lists: `servers`, `firewalls`, …
    const PLURAL: &'static str;
    /// Whether the list's `status` filter keeps it.
    fn has_status(&self, query: &ListQuery) -> bool;
}

impl Kind for Server {
    const KIND: &'static str = "server";
    fn items(state: &Project) -> &BTreeMap<u64, Server> {
        &state.servers
    }
    fn render(&self, state: &Project) -> Value {
        render::server(state, self)
    }
}

impl Listed for Server {
    const PLURAL: &'static str = "servers";
    fn has_status(&self, query: &ListQuery) -> bool {
        query.status.is_empty() || query.status.iter().any(|st| st == self.status)
    }
}

impl Kind for Firewall {
    const KIND: &'static str = "firewall";
    fn items(state: &Project) -> &BTreeMap<u64, Firewall> {
        &state.firewalls
    }
    fn render(&self, _: &Project) -> Value {
        render::firewall(self)
    }
}

impl Listed for Firewall {
    const PLURAL: &'static str = "firewalls";
    fn has_status(&self, _: &ListQuery) -> bool {
        true
    }
}

impl Kind for Volume {
    const KIND: &'static str = "volume";
    fn items(state: &Project) -> &BTreeMap<u64, Volume> {
        &state.volumes
    }
    fn render(&self, _: &Project) -> Value {
        render::volume(self)
    }
}

impl Listed for Volume {
    const PLURAL: &'static str = "volumes";
    fn has_status(&self, query: &ListQuery) -> bool {
        query.status.is_empty() || query.status.iter().any(|s| s == "available")
    }
}

impl Kind for Action {
    const KIND: &'static str = "action";
    fn items(state: &Project) -> &BTreeMap<u64, Action> {
        &state.actions
    }
    fn render(&self, _: &Project) -> Value {
        render::action(self)
    }
}

/// `GET /v1/{kind}s/{id}`.
pub(crate) async fn get_one<K: Kind>(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, _| {
        let item = found(K::items(state), K::KIND, id)?;
        Ok(single(K::KIND, &item.render(state)))
    })
}

/// `GET /v1/{kind}s`: by name, label selector and status, sorted and a page at a time.
pub(crate) async fn list<K: Listed>(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref(), ListQuery::RESOURCE_SORTS)?;
    shared.with(|state, _| {
        Ok(page(
            &query,
            K::PLURAL,
            K::items(state),
            |item| item.has_status(&query),
            |item| item.render(state),
        ))
    })
}

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
pub(crate) fn action_created(state: &Project, action: u64) -> Response {
    answer_created(&json!({"action": render::action_by_id(state, action)}))
}

/// The actions with these ids, rendered.
pub(crate) fn actions_json(state: &Project, ids: &[u64]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| render::action_by_id(state, *id))
            .collect(),
    )
}

/// `201 Created` with the actions a call started.
pub(crate) fn actions_created(state: &Project, actions: &[u64]) -> Response {
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
