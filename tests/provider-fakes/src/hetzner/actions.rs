//! `/v1/actions`: several actions by repeated `id` (the filter is mandatory, as at Hetzner); one
//! by id is [`super::reply::get_one`]. Reading an action is what makes it progress, through
//! [`super::Shared::with`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::list::ListQuery;
use super::state::Action;
use super::{Shared, render};

/// The fields actions sort by (hcloud-go asks for `sort=status&sort=id` when it waits).
const SORTS: &[&str] = &["id", "command", "status", "progress", "started", "finished"];

fn key(action: &Action, field: &str) -> (String, u64) {
    match field {
        "command" => (action.command.to_owned(), 0),
        "status" => (
            render::action(action)["status"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            0,
        ),
        "progress" => (String::new(), u64::from(action.progress)),
        _ => (String::new(), action.id),
    }
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref(), SORTS)?;
    if query.ids.is_empty() {
        return Err(ApiError::invalid_field("id", "at least one id is required"));
    }
    shared.with(|state, _| {
        let mut found: Vec<&Action> = query
            .ids
            .iter()
            .filter_map(|id| state.actions.get(id))
            .collect();
        found.sort_by_key(|a| a.id);
        found.dedup_by_key(|a| a.id);
        for (field, desc) in query.sort.iter().rev() {
            found.sort_by_key(|a| key(a, field));
            if *desc {
                found.reverse();
            }
        }
        let actions: Vec<_> = found
            .into_iter()
            .map(render::action)
            .filter(|a| {
                query.status.is_empty() || query.status.iter().any(|s| a["status"] == s.as_str())
            })
            .collect();
        Ok(Json(json!({"actions": actions})).into_response())
    })
}
