//! Hetzner Cloud Firewalls behind [`Firewalls`]. A new ruleset is followed to the end of its
//! actions, so a caller reading the firewall back sees it applied.

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;

use super::wire::{self, Rule, ServerRef};
use super::{Hetzner, list_query, numeric, page};
use crate::providers::{
    Direction, Firewall, FirewallRule, FirewallSpec, Firewalls, Labels, Page, ProviderError,
};

fn rule(found: Rule) -> FirewallRule {
    FirewallRule {
        direction: if found.direction == "out" {
            Direction::Out
        } else {
            Direction::In
        },
        protocol: found.protocol,
        port: found.port,
        source_ips: found.source_ips,
        destination_ips: found.destination_ips,
        description: found.description,
    }
}

fn wire_rule(rule: &FirewallRule) -> Rule {
    Rule {
        direction: match rule.direction {
            Direction::In => "in",
            Direction::Out => "out",
        }
        .to_owned(),
        protocol: rule.protocol.clone(),
        port: rule.port.clone(),
        source_ips: rule.source_ips.clone(),
        destination_ips: rule.destination_ips.clone(),
        description: rule.description.clone(),
    }
}

fn firewall(found: wire::Firewall) -> Firewall {
    Firewall {
        id: found.id.to_string(),
        name: found.name,
        labels: found.labels,
        rules: found.rules.into_iter().map(rule).collect(),
        servers: found
            .applied_to
            .into_iter()
            .filter_map(|a| a.server.map(|s| s.id.to_string()))
            .collect(),
    }
}

#[async_trait]
impl Firewalls for Hetzner {
    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, ProviderError> {
        let rules: Vec<Rule> = spec.rules.iter().map(wire_rule).collect();
        let created: wire::OneFirewall = self
            .send(
                Method::POST,
                "/firewalls",
                &json!({"name": spec.name, "labels": spec.labels, "rules": rules}),
            )
            .await?;
        let actions: Vec<i64> = created.actions.iter().map(|a| a.id).collect();
        self.wait_actions(&actions).await?;
        Ok(firewall(created.firewall))
    }

    async fn get_firewall(&self, id: &str) -> Result<Option<Firewall>, ProviderError> {
        let Ok(id) = numeric(id, "firewall") else {
            return Ok(None);
        };
        let found: Option<wire::OneFirewall> = self.find(&format!("/firewalls/{id}")).await?;
        Ok(found.map(|f| firewall(f.firewall)))
    }

    async fn list_firewalls(
        &self,
        selector: &Labels,
        page_token: Option<&str>,
    ) -> Result<Page<Firewall>, ProviderError> {
        let found: wire::Firewalls = self
            .get(&format!("/firewalls?{}", list_query(selector, page_token)?))
            .await?;
        Ok(page(found.firewalls, &found.meta, firewall))
    }

    async fn set_rules(&self, id: &str, rules: &[FirewallRule]) -> Result<(), ProviderError> {
        let id = numeric(id, "firewall")?;
        let rules: Vec<Rule> = rules.iter().map(wire_rule).collect();
        let started: wire::Actions = self
            .send(
                Method::POST,
                &format!("/firewalls/{id}/actions/set_rules"),
                &json!({ "rules": rules }),
            )
            .await?;
        let actions: Vec<i64> = started.actions.iter().map(|a| a.id).collect();
        self.wait_actions(&actions).await
    }

    async fn apply_to_server(&self, id: &str, server_id: &str) -> Result<(), ProviderError> {
        let id = numeric(id, "firewall")?;
        let server = numeric(server_id, "server")?;
        let applied = self
            .send::<wire::Actions>(
                Method::POST,
                &format!("/firewalls/{id}/actions/apply_to_resources"),
                &json!({"apply_to": [{"type": "server", "server": ServerRef { id: server }}]}),
            )
            .await;
        match applied {
            Ok(started) => {
                let actions: Vec<i64> = started.actions.iter().map(|a| a.id).collect();
                self.wait_actions(&actions).await
            }
            // Applied already: what was asked holds.
            Err(e) if e.code.as_deref() == Some("firewall_already_applied") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_firewall(&self, id: &str) -> Result<(), ProviderError> {
        let id = numeric(id, "firewall")?;
        self.delete(&format!("/firewalls/{id}")).await
    }
}
