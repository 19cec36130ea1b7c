//! Plain VMs: a Hetzner server with its own firewall and a one-shot cloud-init, and no agent.

use serde::{Deserialize, Serialize};

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
