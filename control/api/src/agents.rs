//! Agents: one dedicated VM per customer workspace, booted from a pinned platform image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What the control plane last observed of the Agent's VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Running,
    /// Provisioned but not (yet, or any more) seen running.
    Paused,
    Destroyed,
}

impl From<PeriodState> for AgentState {
    /// A live Agent's state: the state of its open period.
    fn from(state: PeriodState) -> Self {
        match state {
            PeriodState::Running => Self::Running,
            PeriodState::Paused => Self::Paused,
        }
    }
}

/// An operation accepted but not yet confirmed by the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AgentOperation {
    Provision,
    Start,
    Stop,
    Destroy,
}

/// The release an Agent was provisioned on. Restarts always reuse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImagePin {
    pub image_id: String,
    pub version: String,
    pub agent_version: String,
    pub manifest_digest: String,
    /// The provider's reference for the release, as pinned.
    pub reference: String,
    pub env: BTreeMap<String, String>,
}

/// An Agent as the dashboard sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// `hetzner`, `fly` (legacy) or `local`.
    pub provider: String,
    pub state: AgentState,
    /// The operation in progress, if any.
    #[serde(default)]
    pub operation: Option<AgentOperation>,
    /// Why the last operation failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
    pub image: ImagePin,
    /// True when a newer release is current.
    pub outdated: bool,
    /// "Cloning is the supported upgrade path" when outdated.
    #[serde(default)]
    pub upgrade_note: Option<String>,
    pub provisioned_at: Timestamp,
    #[serde(default)]
    pub destroyed_at: Option<Timestamp>,
    /// For a running Agent, whether its vm-agent heartbeats (false once it has been silent
    /// for several intervals); absent while it is not running or never reported.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// When control last recorded a heartbeat (recorded behind, so it may lag by minutes;
    /// health is judged on the live value).
    #[serde(default)]
    pub last_heartbeat_at: Option<Timestamp>,
    /// The Agent this one is a clone of: its `/data/home-coder` started as a copy of that
    /// Agent's. Absent for an Agent that is no clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<String>,
    /// The clone being made of this Agent; start, stop, destroy and another clone wait until
    /// it is made (the Agent may be stopped meanwhile for a consistent copy, and is then put
    /// back as it was). Absent when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloning_to: Option<String>,
    /// What `vm-agent status` shows on the VM, from the Agent's newest heartbeat whichever
    /// replica received it (only in `GET /api/agents/{id}`; absent in listings and before the
    /// first heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub support: Option<AgentSupport>,
}

/// The support view of an Agent: its vm-agent's newest report. Tunnel and slice states,
/// restarts, the crash-loop flag, the last exit, versions and the boot id are recorded within
/// a heartbeat of changing, on every replica; figures such as free space and connections may
/// lag by a write period on a replica that does not hear from the Agent itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentSupport {
    /// When the heartbeat this view comes from was received.
    pub heartbeat_at: Timestamp,
    /// The VM's kernel boot id: a new one means it rebooted.
    pub boot_id: String,
    /// The heartbeat's sequence number (counts up from 1 per vm-agent process).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub sequence: u64,
    pub agent_version: String,
    pub image_version: String,
    /// Seconds the vm-agent process had been running.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub agent_uptime_s: u64,
    /// The supervised `cloudflared`: state, connections, restarts, last exit, crash loop.
    pub tunnel: crate::agent::TunnelReport,
    /// The persistent slice `/data/home-coder`: state and free space.
    pub slice: crate::agent::SliceReport,
}

/// Body of `POST /api/agents`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProvisionAgent {
    /// 1 to 63 characters: lowercase letters, digits and inner hyphens (an RFC 1123 label).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// The owning account. Operator tokens must give it; account tokens must not.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub account_id: Option<String>,
}

/// Body of `POST /api/agents/{id}/clone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CloneAgent {
    /// The clone's name: 1 to 63 characters, lowercase letters, digits and inner hyphens (an
    /// RFC 1123 label). Default: the source's name followed by `-clone`, when that fits.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: Option<String>,
}

/// Body of `POST /api/agents/import` (operators): an Agent that already runs on Fly (the legacy
/// cohort), taken under control's management as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImportAgent {
    /// The owning account.
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub account_id: String,
    /// 1 to 63 characters: lowercase letters, digits and inner hyphens (an RFC 1123 label).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// The Fly app the Agent's machine runs in: 1 to 63 letters, digits, `-` and `_`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,63}$"))]
    pub app: String,
    /// The Fly machine id: 1 to 63 letters, digits, `-` and `_`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,63}$"))]
    pub machine_id: String,
    /// The Fly volume the machine mounts (`vol_…`): 1 to 63 letters, digits, `-` and `_`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,63}$"))]
    pub volume_id: String,
    /// The image the machine runs, by digest: `repository@sha256:<64 lowercase hex digits>`,
    /// the repository without `@` or white space.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[^@\\s]+@sha256:[0-9a-f]{64}$")
    )]
    pub image: String,
}

/// Answer of `POST /api/agents/{id}/bootstrap-token`: a fresh single-use token for an Agent
/// whose VM lost its credential. It is shown once and stored nowhere but as a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapToken {
    pub agent_id: String,
    /// Put it on the VM at `/etc/vm-agent/bootstrap-token` (mode 0600): a vm-agent without a
    /// credential (`/var/lib/vm-agent/credential`) registers with it at its next heartbeat,
    /// once, and receives a new credential, which revokes the Agent's older ones.
    pub bootstrap_token: String,
    pub expires_at: Timestamp,
}

/// Body of `POST /api/agents/{id}/transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransferAgent {
    /// The destination account, another than the Agent's.
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub to_account: String,
}

/// One page of Agents, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentList {
    pub items: Vec<Agent>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A billing state of a running or paused Agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PeriodState {
    Running,
    Paused,
}

/// One state period: `[started_at, ended_at)`, open while `ended_at` is absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatePeriod {
    pub account_id: String,
    pub state: PeriodState,
    pub started_at: Timestamp,
    #[serde(default)]
    pub ended_at: Option<Timestamp>,
}

/// Answer of `GET /api/agents/{id}/timeline`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timeline {
    pub agent_id: String,
    /// Periods overlapping the requested window, oldest first. Account tokens see only the
    /// periods attributed to their own account.
    pub periods: Vec<StatePeriod>,
}
