//! `/v1/actions`: one action by id, or several by repeated `id` (the filter is mandatory, as at
//! Hetzner). Reading an action is what makes it progress, through [`super::Shared::with`].

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::list::ListQuery;
use super::{Shared, parse_id, render};

pub(crate) async fn get_one(
    State(shared): State<Arc<Shared>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    shared.with(|state, _| {
        let action = state
            .actions
            .get(&id)
            .ok_or_else(|| ApiError::not_found("action", id))?;
        Ok(Json(json!({"action": render::action(action)})).into_response())
    })
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref())?;
    if query.ids.is_empty() {
        return Err(ApiError::invalid_field("id", "at least one id is required"));
    }
    shared.with(|state, _| {
        let actions: Vec<_> = query
            .ids
            .iter()
            .filter_map(|id| state.actions.get(id))
            .map(render::action)
            .collect();
        Ok(Json(json!({"actions": actions})).into_response())
    })
}
