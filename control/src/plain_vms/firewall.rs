//! A Plain VM's inbound ruleset, checked before it reaches Hetzner: Hetzner's rule shape and
//! limits (50 rules, 100 networks a rule, 255-character descriptions), protocols tcp, udp,
//! icmp, esp and gre, ports for tcp and udp only (one, or a range within 1–65535), networks in
//! CIDR notation with their host bits clear, and no outbound rule at all (no egress policy at
//! v1). Every fault is named by its field (`rules[3].port`), and nothing is sent when one is.
//!
//! [`read`] and [`replace`] are `GET` and `PUT /api/plain-vms/{id}/firewall`: the ruleset is
//! read live from the provider and replaced there whole (the provider applies it before it
//! answers, and it is read back); no copy and no history are kept here, and edits are not
//! audit events.

use std::net::IpAddr;
use std::sync::Arc;

use control_api::agents::AgentOperation;
use control_api::plain_vms::{FirewallRuleInput, FirewallRules};
use tracing::info;

use super::visible;
use crate::app::{App, Caller};
use crate::error::{Error, Result};
use crate::providers::{Direction, FirewallRule, Firewalls};
use crate::store::PlainVmRow;
use crate::validate::Checks;

/// Hetzner's limits.
pub const MAX_RULES: usize = 50;
pub const MAX_NETWORKS: usize = 100;
pub const MAX_DESCRIPTION: usize = 255;

const PROTOCOLS: [&str; 5] = ["tcp", "udp", "icmp", "esp", "gre"];

/// A new Plain VM's ruleset: SSH (TCP/22) from anywhere, IPv4 and IPv6, and nothing else.
pub fn default_rules() -> Vec<FirewallRule> {
    vec![FirewallRule {
        direction: Direction::In,
        protocol: "tcp".to_owned(),
        port: Some("22".to_owned()),
        source_ips: vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()],
        destination_ips: Vec::new(),
        description: Some("ssh".to_owned()),
    }]
}

/// The ruleset as Hetzner will receive it, or every fault in it, each naming its field.
pub fn check_rules(rules: &[FirewallRuleInput]) -> Result<Vec<FirewallRule>> {
    let mut checks = Checks::new();
    if rules.len() > MAX_RULES {
        checks.fail(
            "rules",
            format!("holds {} rules; Hetzner allows {MAX_RULES}", rules.len()),
        );
    }
    let checked = rules
        .iter()
        .enumerate()
        .map(|(n, rule)| check_rule(&mut checks, &format!("rules[{n}]"), rule))
        .collect();
    checks.finish()?;
    Ok(checked)
}

fn check_rule(checks: &mut Checks, at: &str, rule: &FirewallRuleInput) -> FirewallRule {
    match rule.direction.as_str() {
        "in" => {}
        "out" => checks.fail(
            format!("{at}.direction"),
            "is out: no egress policy at v1 (outbound traffic is not filtered)",
        ),
        other => checks.fail(
            format!("{at}.direction"),
            format!("{other:?} is not a direction; inbound rules are \"in\""),
        ),
    }
    if !rule.destination_ips.is_empty() {
        checks.fail(
            format!("{at}.destination_ips"),
            "is for outbound rules: no egress policy at v1",
        );
    }
    let protocol = rule.protocol.as_str();
    if !PROTOCOLS.contains(&protocol) {
        checks.fail(
            format!("{at}.protocol"),
            format!("{protocol:?} is not one of tcp, udp, icmp, esp, gre"),
        );
    }
    let with_ports = matches!(protocol, "tcp" | "udp");
    match (&rule.port, with_ports) {
        (Some(port), true) => {
            if let Err(message) = check_port(port) {
                checks.fail(format!("{at}.port"), message);
            }
        }
        (None, true) => checks.fail(
            format!("{at}.port"),
            "is required for tcp and udp: a port (22) or a range (8000-8100)",
        ),
        (Some(_), false) => checks.fail(
            format!("{at}.port"),
            format!("is for tcp and udp only, not {protocol}"),
        ),
        (None, false) => {}
    }
    if rule.source_ips.is_empty() {
        checks.fail(
            format!("{at}.source_ips"),
            "is empty: name the networks let in (0.0.0.0/0 and ::/0 for everyone)",
        );
    }
    if rule.source_ips.len() > MAX_NETWORKS {
        checks.fail(
            format!("{at}.source_ips"),
            format!(
                "holds {} networks; Hetzner allows {MAX_NETWORKS}",
                rule.source_ips.len()
            ),
        );
    }
    for (n, network) in rule.source_ips.iter().enumerate() {
        if let Err(message) = check_network(network) {
            checks.fail(format!("{at}.source_ips[{n}]"), message);
        }
    }
    if let Some(description) = &rule.description {
        if description.chars().count() > MAX_DESCRIPTION {
            checks.fail(
                format!("{at}.description"),
                format!("is longer than {MAX_DESCRIPTION} characters"),
            );
        }
        if description.chars().any(char::is_control) {
            checks.fail(format!("{at}.description"), "holds control characters");
        }
    }
    FirewallRule {
        direction: Direction::In,
        protocol: protocol.to_owned(),
        port: rule.port.clone(),
        source_ips: rule.source_ips.clone(),
        destination_ips: Vec::new(),
        description: rule.description.clone(),
    }
}

/// A port (`22`) or a range (`8000-8100`), within 1–65535, low to high.
fn check_port(text: &str) -> std::result::Result<(), String> {
    let number = |part: &str| -> std::result::Result<u16, String> {
        let digits =
            !part.is_empty() && part.len() <= 5 && part.bytes().all(|b| b.is_ascii_digit());
        match part.parse::<u16>() {
            Ok(port) if digits && port >= 1 => Ok(port),
            _ => Err(format!(
                "{text:?} is not a port (1-65535) or a range of them (8000-8100)"
            )),
        }
    };
    match text.split_once('-') {
        None => number(text).map(drop),
        Some((low, high)) => {
            let (low, high) = (number(low)?, number(high)?);
            if low > high {
                return Err(format!("{text:?} runs backwards: write the low port first"));
            }
            Ok(())
        }
    }
}

/// An IPv4 or IPv6 network in CIDR notation, its host bits clear.
fn check_network(text: &str) -> std::result::Result<(), String> {
    let Some((address, prefix_text)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not a network in CIDR notation (203.0.113.0/24, 2001:db8::/32)"
        ));
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{text:?}: {address:?} is not an IP address"))?;
    let width: u32 = if address.is_ipv4() { 32 } else { 128 };
    // Digits only, no sign and no leading zero (`+8` and `08` are refused).
    let plain = !prefix_text.is_empty()
        && prefix_text.bytes().all(|b| b.is_ascii_digit())
        && (prefix_text == "0" || !prefix_text.starts_with('0'));
    let prefix: u32 = match prefix_text.parse() {
        Ok(prefix) if plain && prefix <= width => prefix,
        _ => {
            return Err(format!(
                "{text:?}: the prefix length must be a number from 0 to {width}"
            ));
        }
    };
    let bits = match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
        IpAddr::V6(v6) => u128::from(v6),
    };
    let host = bits.checked_shl(prefix).unwrap_or(0);
    if host != 0 {
        return Err(format!(
            "{text:?} has host bits set: the network is written with them clear"
        ));
    }
    Ok(())
}

/// The wire form of a rule the provider holds.
fn to_input(rule: FirewallRule) -> FirewallRuleInput {
    FirewallRuleInput {
        direction: match rule.direction {
            Direction::In => "in",
            Direction::Out => "out",
        }
        .to_owned(),
        protocol: rule.protocol,
        port: rule.port,
        source_ips: rule.source_ips,
        destination_ips: rule.destination_ips,
        description: rule.description,
    }
}

/// The VM's firewall and the firewalls of its cloud, if it has one yet.
async fn firewall_of<'a>(
    app: &'a App,
    caller: &Caller,
    id: &str,
) -> Result<(PlainVmRow, String, &'a Arc<dyn Firewalls>)> {
    let vm = visible(&mut app.store.read().await?, caller, id).await?;
    if vm.destroyed_at.is_some() || vm.operation == Some(AgentOperation::Destroy) {
        return Err(Error::Conflict(format!(
            "plain VM {id} is destroyed or being destroyed, and its firewall with it"
        )));
    }
    let Some(firewall_id) = vm.firewall_id.clone() else {
        return Err(Error::Conflict(format!(
            "plain VM {id} has no firewall yet: its provisioning has not finished{}",
            vm.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    };
    let firewalls = app
        .providers
        .get(&vm.provider)
        .and_then(|cloud| cloud.firewalls.as_ref())
        .ok_or_else(|| {
            Error::Conflict(format!(
                "provider {} of plain VM {id} is not configured on this control plane",
                vm.provider
            ))
        })?;
    Ok((vm, firewall_id, firewalls))
}

/// The ruleset as the provider holds it now.
async fn live_rules(
    vm: &PlainVmRow,
    firewall_id: &str,
    firewalls: &Arc<dyn Firewalls>,
) -> Result<FirewallRules> {
    let firewall = firewalls
        .get_firewall(firewall_id)
        .await
        .map_err(|e| Error::provider(&vm.provider, &e))?
        .ok_or_else(|| {
            Error::Provider(format!(
                "{} has no firewall {firewall_id}, which plain VM {} was given; it was \
                 deleted outside this control plane",
                vm.provider, vm.id
            ))
        })?;
    Ok(FirewallRules {
        rules: firewall.rules.into_iter().map(to_input).collect(),
    })
}

/// `GET /api/plain-vms/{id}/firewall`: the inbound ruleset, read live from the provider.
pub async fn read(app: &App, caller: &Caller, id: &str) -> Result<FirewallRules> {
    let (vm, firewall_id, firewalls) = firewall_of(app, caller, id).await?;
    live_rules(&vm, &firewall_id, firewalls).await
}

/// `PUT /api/plain-vms/{id}/firewall`: replaces the whole inbound ruleset at the provider
/// (which applies it before answering), then reads it back. Checked first: a rejected ruleset
/// never reaches the provider. No history is kept, and it is not an audit event.
pub async fn replace(
    app: &App,
    caller: &Caller,
    id: &str,
    request: &FirewallRules,
) -> Result<FirewallRules> {
    let rules = check_rules(&request.rules)?;
    let (vm, firewall_id, firewalls) = firewall_of(app, caller, id).await?;
    firewalls
        .set_rules(&firewall_id, &rules)
        .await
        .map_err(|e| Error::provider(&vm.provider, &e))?;
    let now = live_rules(&vm, &firewall_id, firewalls).await?;
    info!(
        request_id = %caller.request_id,
        account_id = %vm.account_id,
        plain_vm_id = %vm.id,
        firewall_id = %firewall_id,
        rules = now.rules.len(),
        "plain VM firewall replaced at the provider"
    );
    Ok(now)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn rules(value: Value) -> Vec<FirewallRuleInput> {
        serde_json::from_value(value).unwrap()
    }

    fn ssh() -> Value {
        json!({"direction": "in", "protocol": "tcp", "port": "22",
               "source_ips": ["0.0.0.0/0", "::/0"], "description": "ssh"})
    }

    #[test]
    fn good_rulesets_pass_as_hetzner_will_receive_them() {
        let checked = check_rules(&rules(json!([
            ssh(),
            {"direction": "in", "protocol": "udp", "port": "60000-61000", "source_ips": ["203.0.113.0/24"]},
            {"direction": "in", "protocol": "icmp", "source_ips": ["2001:db8::/32", "198.51.100.7/32"]},
            {"direction": "in", "protocol": "esp", "source_ips": ["::/0"]},
            {"direction": "in", "protocol": "gre", "source_ips": ["10.0.0.0/8"]},
            {"direction": "in", "protocol": "tcp", "port": "1-65535", "source_ips": ["2001:db8::1/128"]},
        ])))
        .unwrap();
        assert_eq!(checked.len(), 6);
        assert_eq!(checked[0], default_rules()[0]);
        assert!(checked.iter().all(|r| r.direction == Direction::In));
        assert!(
            check_rules(&[]).unwrap().is_empty(),
            "no rule at all: nothing gets in"
        );
        let fifty: Vec<Value> = (0..MAX_RULES).map(|_| ssh()).collect();
        assert_eq!(check_rules(&rules(json!(fifty))).unwrap().len(), MAX_RULES);
    }
}
