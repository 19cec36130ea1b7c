//! The parts of Hetzner Cloud's JSON that control reads and writes (the full shapes are in
//! Hetzner's OpenAPI document). Unknown fields are ignored: Hetzner adds fields freely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `{"error": {"code", "message", "details"}}`, every failed answer's body.
#[derive(Debug, Deserialize)]
pub(super) struct ErrorEnvelope {
    pub(super) error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    pub(super) code: String,
    pub(super) message: String,
    #[serde(default)]
    pub(super) details: Option<ErrorDetails>,
}

/// `invalid_input`'s details: which fields, and what is wrong with each.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ErrorDetails {
    #[serde(default)]
    pub(super) fields: Vec<FieldError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FieldError {
    pub(super) name: String,
    #[serde(default)]
    pub(super) messages: Vec<String>,
}

/// `meta.pagination` of a list.
#[derive(Debug, Deserialize)]
pub(super) struct Meta {
    pub(super) pagination: Pagination,
}

#[derive(Debug, Deserialize)]
pub(super) struct Pagination {
    #[serde(default)]
    pub(super) next_page: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Action {
    pub(super) id: i64,
    pub(super) command: String,
    /// `running`, `success` or `error`.
    pub(super) status: String,
    #[serde(default)]
    pub(super) error: Option<ActionError>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ActionError {
    pub(super) code: String,
    pub(super) message: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct Actions {
    pub(super) actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OneAction {
    pub(super) action: Action,
}

#[derive(Debug, Deserialize)]
pub(super) struct Server {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) image: Option<Image>,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    pub(super) public_net: PublicNet,
}

#[derive(Debug, Deserialize)]
pub(super) struct Image {
    pub(super) id: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct PublicNet {
    #[serde(default)]
    pub(super) ipv4: Option<Address>,
    #[serde(default)]
    pub(super) ipv6: Option<Address>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Address {
    pub(super) ip: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct OneServer {
    pub(super) server: Server,
}

#[derive(Debug, Deserialize)]
pub(super) struct Servers {
    pub(super) servers: Vec<Server>,
    pub(super) meta: Meta,
}

/// `POST /servers`. Empty lists and absent options are left out, as Hetzner asks.
#[derive(Debug, Serialize)]
pub(super) struct CreateServer<'a> {
    pub(super) name: &'a str,
    pub(super) server_type: &'a str,
    pub(super) image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) location: Option<&'a str>,
    pub(super) labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) firewalls: Vec<FirewallRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) volumes: Vec<i64>,
    /// Volumes are mounted by the image (by filesystem label), never by Hetzner's automount.
    pub(super) automount: bool,
    pub(super) start_after_create: bool,
    pub(super) public_net: PublicNetRequest,
}

/// `POST /servers`' `public_net`: whether the server gets a public `IPv4` and `IPv6` address
/// (Hetzner makes each a new primary IP).
#[derive(Debug, Serialize)]
pub(super) struct PublicNetRequest {
    pub(super) enable_ipv4: bool,
    pub(super) enable_ipv6: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct FirewallRef {
    pub(super) firewall: i64,
}

#[derive(Debug, Deserialize)]
pub(super) struct Firewall {
    pub(super) id: i64,
    pub(super) name: String,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) rules: Vec<Rule>,
    #[serde(default)]
    pub(super) applied_to: Vec<AppliedTo>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AppliedTo {
    #[serde(default)]
    pub(super) server: Option<ServerRef>,
}

#[derive(Debug, Deserialize, Serialize)]
pub(super) struct ServerRef {
    pub(super) id: i64,
}

/// A firewall rule as Hetzner reads and writes it. Requests leave empty lists and a null
/// port or description out.
#[derive(Debug, Deserialize, Serialize)]
pub(super) struct Rule {
    pub(super) direction: String,
    pub(super) protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) port: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) source_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) destination_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OneFirewall {
    pub(super) firewall: Firewall,
    #[serde(default)]
    pub(super) actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Firewalls {
    pub(super) firewalls: Vec<Firewall>,
    pub(super) meta: Meta,
}

#[derive(Debug, Deserialize)]
pub(super) struct Volume {
    pub(super) id: i64,
    pub(super) name: String,
    /// GB; a `number` in Hetzner's schema, whole in practice.
    pub(super) size: serde_json::Number,
    #[serde(default)]
    pub(super) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) server: Option<i64>,
    #[serde(default)]
    pub(super) linux_device: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct OneVolume {
    pub(super) volume: Volume,
}

#[derive(Debug, Deserialize)]
pub(super) struct Volumes {
    pub(super) volumes: Vec<Volume>,
    pub(super) meta: Meta,
}
