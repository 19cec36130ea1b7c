//! Wire types exchanged with `control`: by the dashboard over the public API and, later, by
//! `vm-agent` over the agent API.
//!
//! This crate holds types and their JSON shape only, never behaviour that needs the server, so
//! the agent can depend on it without pulling in storage or HTTP code. Types change additively
//! (new fields are `Option` with `#[serde(default)]`) so an old agent keeps talking to a new
//! control; `tests/golden.rs` pins the JSON of every type.

pub mod accounts;
pub mod agent;
pub mod agent_config;
pub mod agents;
pub mod audit;
pub mod images;
pub mod instant;
pub mod problem;
pub mod usage;

pub use instant::{Day, Timestamp};

/// The note an Agent pinned to an image older than the current release carries.
pub const UPGRADE_NOTE: &str = "Cloning is the supported upgrade path";

/// Answer of `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`, or `unavailable` with the failing dependency in `detail`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
