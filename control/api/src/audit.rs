//! The append-only, hash-chained audit log.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::usage::ResourceKind;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AuditAction {
    #[serde(rename = "agent.provision")]
    AgentProvision,
    #[serde(rename = "agent.start")]
    AgentStart,
    #[serde(rename = "agent.stop")]
    AgentStop,
    #[serde(rename = "agent.destroy")]
    AgentDestroy,
    #[serde(rename = "agent.transfer")]
    AgentTransfer,
    /// A clone was made of an Agent: one event on the source (naming the clone in
    /// `details.clone_id`) and one on the clone (naming the source in `details.source_id`).
    #[serde(rename = "agent.clone")]
    AgentClone,
    /// An operator issued a fresh bootstrap token for an Agent whose VM lost its credential.
    #[serde(rename = "agent.rebootstrap")]
    AgentRebootstrap,
    /// A Plain VM was destroyed (its server and firewall deleted). Plain VM provisioning is a
    /// timestamp on the VM, not an event; firewall edits keep no history.
    #[serde(rename = "plain_vm.destroy")]
    PlainVmDestroy,
    #[serde(rename = "plain_vm.transfer")]
    PlainVmTransfer,
}

/// One audit event. `hash` is SHA-256 over the event's fields and `prev_hash`, the hash of the
/// event before it, so editing, deleting or reordering any event breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    pub id: String,
    pub at: Timestamp,
    /// Who asked: `token:<id>`, `cli` or `system`.
    pub actor: String,
    pub action: AuditAction,
    pub resource_kind: ResourceKind,
    pub resource_id: String,
    /// The account owning the resource when the event happened (the source, for a transfer).
    pub account_id: String,
    /// The destination account of a transfer.
    #[serde(default)]
    pub to_account_id: Option<String>,
    /// The id control gave the request that caused the event (a caller's own `X-Request-Id`
    /// is in `details.caller_request_id`).
    #[serde(default)]
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// One page of audit events, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditPage {
    pub items: Vec<AuditEvent>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The first event at which the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokenLink {
    /// The position where the chain breaks.
    pub seq: i64,
    /// The id of the event stored there, if there is one.
    #[serde(default)]
    pub event_id: Option<String>,
    pub reason: String,
}

/// Answer of `GET /api/audit/verify` and of `control audit verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditVerification {
    pub ok: bool,
    pub events_checked: i64,
    /// The hash of the last event, when the chain is whole.
    #[serde(default)]
    pub head_hash: Option<String>,
    #[serde(default)]
    pub first_bad: Option<BrokenLink>,
}

/// A signed statement of the chain's head: "the log held `seq` events, the last with hash
/// `hash`, at `at`". Control makes one periodically when the chain has grown, after checking the
/// events since the previous one, and publishes it in its log and at
/// `GET /api/audit/checkpoints`; kept anywhere outside the database, it lets
/// `control audit verify --checkpoint FILE` prove those events are all still there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditCheckpoint {
    /// How many events the chain held (the last one's seq).
    pub seq: i64,
    /// The hash of event `seq`.
    pub hash: String,
    pub at: Timestamp,
    /// The ed25519 public key that signed it, hex (32 bytes).
    pub public_key: String,
    /// ed25519 over `control audit checkpoint v1\n{seq}\n{hash}\n{at in ms since the epoch}\n`,
    /// hex (64 bytes).
    pub signature: String,
}

/// One page of checkpoints, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditCheckpointPage {
    pub items: Vec<AuditCheckpoint>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}
