//! Plain VMs: a Hetzner server with its own firewall and a one-shot cloud-init, and no agent.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One inbound firewall rule, in Hetzner's own shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FirewallRuleInput {
    /// `in`. Outbound rules are refused: there is no egress policy at v1.
    pub direction: String,
    /// `tcp`, `udp`, `icmp`, `esp` or `gre`.
    pub protocol: String,
    /// For tcp and udp only: a port (`22`) or a range (`8000-8100`) within 1–65535.
    #[serde(default)]
    pub port: Option<String>,
    /// IPv4 and IPv6 networks in CIDR notation with their host bits clear (`0.0.0.0/0`,
    /// `2001:db8::/32`); 1 to 100 of them.
    #[serde(default)]
    pub source_ips: Vec<String>,
    /// Outbound only, so refused at v1; accepted here to say so clearly.
    #[serde(default)]
    pub destination_ips: Vec<String>,
    /// At most 255 characters.
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `PUT /api/plain-vms/{id}/firewall`: the whole inbound ruleset, at most 50 rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FirewallRules {
    pub rules: Vec<FirewallRuleInput>,
}

/// A Plain VM's state. Stopped time is billed like running time: the provider charges for a
/// server that exists, on or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PlainVmState {
    Running,
    /// Provisioned but not (yet, or any more) running.
    Stopped,
    Destroyed,
}

/// A Vault key a Plain VM was given at provisioning, as it was then. Deleting the key from the
/// Vault later leaves it in the VM's `authorized_keys`, and here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlainVmKey {
    pub vault_key_id: String,
    pub name: String,
    /// As `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// A Plain VM: a dedicated server with public IPv4 and IPv6, its own firewall passing only the
/// inbound rules listed, and a one-shot cloud-init. The platform has no agent and no way in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlainVm {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// The host name its first boot set (RFC 1123; with dots, also its fqdn).
    pub hostname: String,
    pub provider: String,
    pub server_type: String,
    pub location: String,
    /// The image it was created from.
    pub image: String,
    /// The image's default user, whom the keys and the one-time password are for.
    pub default_user: String,
    pub state: PlainVmState,
    /// The operation accepted and not yet confirmed by the provider.
    #[serde(default)]
    pub operation: Option<crate::agents::AgentOperation>,
    /// Why the last operation failed, in the provider's words.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Its public IPv4 address, once the server exists.
    #[serde(default)]
    pub ipv4: Option<String>,
    /// Its public IPv6 network (a /64), once the server exists.
    #[serde(default)]
    pub ipv6: Option<String>,
    /// The Vault keys it was given, by fingerprint.
    pub ssh_keys: Vec<PlainVmKey>,
    /// Whether its first boot set a one-time password (to be changed at first login).
    pub one_time_password_set: bool,
    /// The one-time password, in the answer to `POST /api/plain-vms` only: shown once, stored
    /// nowhere (not even in a retry's replayed answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
    /// When provisioning was accepted (a timestamp, not an audit event).
    pub provisioned_at: Timestamp,
    #[serde(default)]
    pub destroyed_at: Option<Timestamp>,
}

/// Body of `POST /api/plain-vms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProvisionPlainVm {
    /// A DNS label: 1 to 63 of `a-z`, `0-9` and `-`, not starting or ending with `-`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    )]
    pub name: String,
    /// An RFC 1123 host name (labels of letters, digits and `-`, at most 253 characters); with
    /// dots, the first label is the host name and the whole the fqdn; with dots, the last label
    /// is not all digits (it would read as an IP address). Default: `name`.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 253,
            pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
        )
    )]
    pub hostname: Option<String>,
    /// The provider's server type (1 to 63 of `a-z 0-9 . _ -`, starting with a letter or
    /// digit). Default: `[plain_vms] server_type`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub server_type: Option<String>,
    /// The provider's location (as `server_type`). Default: `[plain_vms] location`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub location: Option<String>,
    /// The provider's image, by name or id (as `server_type`). Default: `[plain_vms] image`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$"))]
    pub image: Option<String>,
    /// Vault keys of the account for the image's default user: at most 20, each once.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = vault_key_ids_schema))]
    pub vault_key_ids: Vec<String>,
    /// Whether to set a random one-time password on the default user, which must be changed at
    /// first login. It is in this request's answer only.
    #[serde(default)]
    pub one_time_password: bool,
    /// The account; operator tokens must give it, account tokens must not.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub account_id: Option<String>,
}

/// The schema of [`ProvisionPlainVm::vault_key_ids`]: at most 20 distinct Vault key ids.
#[cfg(feature = "openapi")]
fn vault_key_ids_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^key_[0-9A-Za-z]{26}$")),
        )
        .max_items(Some(20))
        .unique_items(true)
        .description(Some(
            "Vault keys of the account for the image's default user: at most 20, each once.",
        ))
        .build()
}

/// Body of `POST /api/plain-vms/{id}/transfer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TransferPlainVm {
    /// The destination account, another than the Plain VM's.
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub to_account: String,
}

/// One page of Plain VMs, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlainVmList {
    pub items: Vec<PlainVm>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}
