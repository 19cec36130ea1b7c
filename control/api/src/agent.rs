//! The agent ↔ control contract: what `vm-agent` sends from each Agent VM.
//!
//! Cloud-init delivers a short-lived, single-use bootstrap token; on first contact the agent
//! exchanges it ([`RegisterRequest`] at `POST /api/agent/v1/register`) for its long-lived
//! credential, then sends a [`Heartbeat`] to `POST /api/agent/v1/heartbeat` with
//! `Authorization: Bearer <credential>` at the interval control answers with.
//!
//! Heartbeats carry platform facts only: nothing from the customer's files or processes, and
//! never a secret. Every field added later is optional, so old agents keep working.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Where the agent registers.
pub const REGISTER_PATH: &str = "/api/agent/v1/register";
/// Where the agent sends heartbeats.
pub const HEARTBEAT_PATH: &str = "/api/agent/v1/heartbeat";

/// Body of `POST /api/agent/v1/register`. Like every agent message it tolerates fields it does
/// not know, so a newer agent can talk to an older control.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    /// The Agent this VM runs, from its cloud-init configuration.
    pub agent_id: String,
    /// The single-use token cloud-init delivered.
    pub bootstrap_token: String,
    pub boot_id: String,
    pub agent_version: String,
    pub image_version: String,
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("agent_id", &self.agent_id)
            .field("bootstrap_token", &"[redacted]")
            .field("boot_id", &self.boot_id)
            .field("agent_version", &self.agent_version)
            .field("image_version", &self.image_version)
            .finish()
    }
}

/// Answer of a successful registration.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    pub agent_id: String,
    /// The Agent's long-lived credential: store it (mode 0600) and send it as a bearer token.
    pub credential: String,
    /// Seconds between heartbeats.
    pub heartbeat_interval_s: u32,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("agent_id", &self.agent_id)
            .field("credential", &"[redacted]")
            .field("heartbeat_interval_s", &self.heartbeat_interval_s)
            .finish()
    }
}

/// How the supervised `cloudflared` is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Started, not (yet) ready.
    Starting,
    /// `/ready` answers 200 with at least one connection.
    Ready,
    /// Was ready, now without connections; restarted if it lasts.
    Unready,
    /// Exited or was restarted; waiting before the next start.
    Backoff,
    /// Exits on usage errors or an invalid token (exit 255): retried only slowly.
    Failed,
    /// Being stopped because the agent is shutting down.
    Stopping,
}

/// The tunnel part of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelReport {
    pub state: TunnelState,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4_294_967_295_i64, format = Int64))]
    pub ready_connections: u32,
    /// Restarts since the agent started.
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4_294_967_295_i64, format = Int64))]
    pub restarts: u32,
    /// Restarted too often lately.
    pub crash_loop: bool,
    /// The last exit: its code, or 128 + the signal that ended it (0 to 255).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 255))]
    pub last_exit: Option<i32>,
    /// When `state` was entered.
    #[serde(default)]
    pub since: Option<Timestamp>,
}

/// The state of the persistent slice `/data/home-coder`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SliceState {
    /// Mounted, writable, owned by the workspace user, with room to spare.
    Mounted,
    /// Not a mount point: the persistent volume is absent. Nothing is written to it.
    Missing,
    /// Mounted but not writable.
    ReadOnly,
    /// Mounted and writable but owned by someone else than the workspace user.
    WrongOwner,
    /// Mounted and healthy, but above the fullness threshold.
    NearlyFull,
}

/// The slice part of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SliceReport {
    pub state: SliceState,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub free_bytes: Option<u64>,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub total_bytes: Option<u64>,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub free_inodes: Option<u64>,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub total_inodes: Option<u64>,
}

/// Host metrics, read with sysinfo. Platform figures only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4_294_967_295_i64, format = Int64))]
    pub cpus: u32,
    /// Load averages over 1, 5 and 15 minutes, times 100.
    #[cfg_attr(feature = "openapi", schema(schema_with = load_centi_schema))]
    pub load_centi: [u32; 3],
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub memory_total_bytes: u64,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub memory_available_bytes: u64,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub root_free_bytes: u64,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub uptime_s: u64,
}

/// The schema of [`HostMetrics::load_centi`]: exactly three unsigned 32-bit integers.
#[cfg(feature = "openapi")]
fn load_centi_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let load = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .maximum(Some(4_294_967_295_i64));
    ArrayBuilder::new()
        .items(load)
        .min_items(Some(3))
        .max_items(Some(3))
        .description(Some("Load averages over 1, 5 and 15 minutes, times 100."))
        .build()
}

/// Body of `POST /api/agent/v1/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    /// The Agent sending it. Control refuses a heartbeat whose credential belongs to another
    /// Agent (optional for agents older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The kernel's boot id: a new one means the VM rebooted.
    pub boot_id: String,
    /// Counts up from 1 per agent process; a reset with the same boot id means the agent
    /// restarted. At most 2^63 − 1, what control stores.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub sequence: u64,
    pub agent_version: String,
    pub image_version: String,
    /// Seconds the agent process has been running.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub agent_uptime_s: u64,
    pub cloudflared: TunnelReport,
    pub slice: SliceReport,
    pub host: HostMetrics,
    /// On a clone whose slice is copied on the VM (`[clone_from]` in its agent.toml): how the
    /// copy is going. Absent on every other Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneReport>,
}

/// Where a clone's copy of its source's slice stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CloneState {
    /// The source's volume (or this VM's own slice) is not there yet.
    Waiting,
    /// Files are being copied.
    Copying,
    /// The copy is in the slice; the source's volume is no longer used.
    Done,
    /// The copy cannot be made (`error` says why); it is not retried.
    Failed,
}

/// The clone part of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneReport {
    /// The Agent whose slice is copied.
    pub source_agent: String,
    pub state: CloneState,
    /// Files, directories and links copied so far.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub files_done: u64,
    /// How many there are, once counted.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub files_total: Option<u64>,
    /// Bytes of file contents copied so far.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub bytes_done: u64,
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)
    )]
    pub bytes_total: Option<u64>,
    /// Why the copy failed (at most 512 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatAck {
    /// Seconds until the next heartbeat.
    pub heartbeat_interval_s: u32,
}
