//! Daily compute usage, rolled up from state periods.

use serde::{Deserialize, Serialize};

use crate::{Day, Timestamp};

/// The kind of resource a usage row or audit event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Agent,
    /// A Hetzner server with a firewall and no agent of ours; it bills existence, so its
    /// usage rows count every second as `running_s`.
    PlainVm,
}

/// Seconds one resource spent in one UTC day on one account.
///
/// For every resource and day, the rows over all accounts add up to the seconds of that day
/// inside the resource's lifetime. An interval `[s, e)` counts the whole-second ticks it crosses,
/// `floor(e) - floor(s)` in seconds, so adjacent periods add up exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    pub day: Day,
    pub resource_kind: ResourceKind,
    pub resource_id: String,
    pub account_id: String,
    pub running_s: i64,
    pub paused_s: i64,
}

/// Answer of `GET /api/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    pub from: Day,
    pub to: Day,
    /// When the rollup these rows come from last ran; today's rows count up to that instant.
    #[serde(default)]
    pub rolled_up_at: Option<Timestamp>,
    pub rows: Vec<UsageRow>,
}
