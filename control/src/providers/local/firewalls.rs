//! The local provider's firewalls: rulesets kept as records, applied to servers by id, as
//! Hetzner's Cloud Firewalls are (a Plain VM's own firewall above all): created with rules,
//! read back with the servers they are applied to, found by labels, given a whole new
//! ruleset, applied to a server, and deleted only once no live server has them (a server's
//! deletion detaches them).

use async_trait::async_trait;

use super::cloud::{applies_to, in_use, new_record_id, page, taken};
use super::records::Write;
use super::{LocalProvider, matches};
use crate::providers::{
    Firewall, FirewallRule, FirewallSpec, Firewalls, Labels, Page, ProviderError, Servers,
};

fn no_firewall(id: &str) -> ProviderError {
    ProviderError::not_found(format!("firewall {id}"))
}

#[async_trait]
impl Firewalls for LocalProvider {
    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, ProviderError> {
        self.cloud
            .firewalls
            .change(|all| {
                if all.values().any(|f| f.name == spec.name) {
                    return Err(taken("firewall", &spec.name));
                }
                let firewall = Firewall {
                    id: new_record_id("fw"),
                    name: spec.name.clone(),
                    labels: spec.labels.clone(),
                    rules: spec.rules.clone(),
                    servers: Vec::new(),
                };
                Ok((Write::Put(firewall.id.clone(), firewall.clone()), firewall))
            })
            .await
    }

    async fn get_firewall(&self, id: &str) -> Result<Option<Firewall>, ProviderError> {
        self.cloud.firewalls.get(id)
    }

    async fn list_firewalls(
        &self,
        selector: &Labels,
        _page: Option<&str>,
    ) -> Result<Page<Firewall>, ProviderError> {
        Ok(page(self.cloud.firewalls.all()?, |f| {
            matches(&f.labels, selector)
        }))
    }

    async fn set_rules(&self, id: &str, rules: &[FirewallRule]) -> Result<(), ProviderError> {
        self.cloud
            .firewalls
            .update(
                id,
                || no_firewall(id),
                |firewall| {
                    firewall.rules = rules.to_vec();
                    true
                },
            )
            .await
    }

    async fn apply_to_server(&self, id: &str, server_id: &str) -> Result<(), ProviderError> {
        if self.get_server(server_id).await?.is_none() {
            return Err(ProviderError::not_found(format!("server {server_id}")));
        }
        self.cloud
            .firewalls
            .update(id, || no_firewall(id), |f| applies_to(f, server_id))
            .await
    }

    async fn delete_firewall(&self, id: &str) -> Result<(), ProviderError> {
        let Some(firewall) = self.cloud.firewalls.get(id)? else {
            return Err(no_firewall(id));
        };
        if let Some(server) = self.live_server(&firewall.servers).await? {
            return Err(in_use("firewall", id, &server));
        }
        self.cloud
            .firewalls
            .change(|_| Ok((Write::Delete(id.to_owned()), ())))
            .await
    }
}

#[cfg(test)]
mod tests {
    use control_api::usage::ResourceKind;

    use super::*;
    use crate::providers::{Direction, ErrorKind, resource_labels};

    fn ssh_only() -> Vec<FirewallRule> {
        vec![FirewallRule {
            direction: Direction::In,
            protocol: "tcp".to_owned(),
            port: Some("22".to_owned()),
            source_ips: vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()],
            destination_ips: Vec::new(),
            description: Some("ssh".to_owned()),
        }]
    }

    #[tokio::test]
    async fn firewalls_keep_names_unique_and_outlive_no_server() {
        let local = LocalProvider::in_memory();
        let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
        let spec = FirewallSpec {
            name: "pvm-1".to_owned(),
            labels: labels.clone(),
            rules: ssh_only(),
        };
        let firewall = local.create_firewall(&spec).await.unwrap();
        let again = local.create_firewall(&spec).await.unwrap_err();
        assert_eq!(
            (again.kind, again.code.as_deref()),
            (ErrorKind::Conflict, Some("uniqueness_error"))
        );
        let found = local.list_firewalls(&labels, None).await.unwrap().items;
        assert_eq!(
            found,
            vec![firewall.clone()],
            "found by our label, to adopt"
        );
        let other = resource_labels(ResourceKind::PlainVm, "pvm_2");
        assert!(
            local
                .list_firewalls(&other, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );

        local.set_rules(&firewall.id, &[]).await.unwrap();
        assert!(
            local
                .get_firewall(&firewall.id)
                .await
                .unwrap()
                .unwrap()
                .rules
                .is_empty()
        );

        // Applied at the server's creation; in use until the server is gone.
        let mut server = crate::providers::local::servers::tests::spec();
        server.firewall_ids = vec![firewall.id.clone()];
        let server = local.create_server(&server).await.unwrap();
        let applied = local.get_firewall(&firewall.id).await.unwrap().unwrap();
        assert_eq!(applied.servers, vec![server.id.clone()]);
        let busy = local.delete_firewall(&firewall.id).await.unwrap_err();
        assert_eq!(
            (busy.kind, busy.code.as_deref()),
            (ErrorKind::Transient, Some("resource_in_use"))
        );
        local.delete_server(&server.id).await.unwrap();
        local.delete_firewall(&firewall.id).await.unwrap();
        let gone = local.delete_firewall(&firewall.id).await.unwrap_err();
        assert_eq!(gone.kind, ErrorKind::NotFound, "a repeated delete is done");
    }

    fn http_only() -> Vec<FirewallRule> {
        vec![FirewallRule {
            direction: Direction::In,
            protocol: "tcp".to_owned(),
            port: Some("80-443".to_owned()),
            source_ips: vec!["192.0.2.0/24".to_owned()],
            destination_ips: Vec::new(),
            description: None,
        }]
    }

    /// A Plain VM's firewall's whole life on `local`, whichever its backing.
    async fn a_plain_vms_firewall_on(local: &LocalProvider) {
        use crate::providers::local::servers::plain_vm_tests::plain_spec;
        let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
        let firewall = local
            .create_firewall(&FirewallSpec {
                name: "pvm-1".to_owned(),
                labels: labels.clone(),
                rules: ssh_only(),
            })
            .await
            .unwrap();
        let read = local.get_firewall(&firewall.id).await.unwrap().unwrap();
        assert_eq!((read.rules, read.servers), (ssh_only(), Vec::new()));
        assert_eq!(
            local.list_firewalls(&labels, None).await.unwrap().items,
            vec![firewall.clone()]
        );
        let others = resource_labels(ResourceKind::PlainVm, "pvm_2");
        assert!(
            local
                .list_firewalls(&others, None)
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Applied at the server's creation, and to a second server afterwards, once.
        let mut spec = plain_spec("pvm_1");
        spec.firewall_ids = vec![firewall.id.clone()];
        let server = local.create_server(&spec).await.unwrap();
        let second = local.create_server(&plain_spec("pvm_2")).await.unwrap();
        local
            .apply_to_server(&firewall.id, &second.id)
            .await
            .unwrap();
        local
            .apply_to_server(&firewall.id, &second.id)
            .await
            .unwrap();
        let applied = local.get_firewall(&firewall.id).await.unwrap().unwrap();
        assert_eq!(applied.servers, vec![server.id.clone(), second.id.clone()]);
        let nowhere = local
            .apply_to_server(&firewall.id, "pvm_9")
            .await
            .unwrap_err();
        assert_eq!(nowhere.kind, ErrorKind::NotFound);
        let no_firewall = local
            .apply_to_server("fw-none", &server.id)
            .await
            .unwrap_err();
        assert_eq!(no_firewall.kind, ErrorKind::NotFound);

        // A new ruleset replaces the old one whole.
        local.set_rules(&firewall.id, &http_only()).await.unwrap();
        let read = local.get_firewall(&firewall.id).await.unwrap().unwrap();
        assert_eq!(read.rules, http_only());
        assert_eq!(read.servers.len(), 2, "rules change nothing else");
        assert_eq!(
            local.set_rules("fw-none", &[]).await.unwrap_err().kind,
            ErrorKind::NotFound
        );

        // In use while either server lives; each server's deletion detaches it.
        for (server_id, left) in [(&server.id, 1), (&second.id, 0)] {
            let busy = local.delete_firewall(&firewall.id).await.unwrap_err();
            assert_eq!(
                (busy.kind, busy.code.as_deref()),
                (ErrorKind::Transient, Some("resource_in_use")),
                "{busy}"
            );
            local.delete_server(server_id).await.unwrap();
            let read = local.get_firewall(&firewall.id).await.unwrap().unwrap();
            assert_eq!(read.servers.len(), left, "{read:?}");
        }
        local.delete_firewall(&firewall.id).await.unwrap();
        assert_eq!(local.get_firewall(&firewall.id).await.unwrap(), None);
        assert_eq!(
            local.delete_firewall(&firewall.id).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn a_plain_vms_firewall_lives_alike_in_memory_and_on_disk() {
        a_plain_vms_firewall_on(&LocalProvider::in_memory()).await;
        let dir = tempfile::tempdir().unwrap();
        let config = crate::providers::local::LocalVmConfig {
            // A Plain VM starts nothing: a program that cannot start would fail the test.
            vm_agent: dir.path().join("no-such-vm-agent"),
            cloudflared: "/bin/false".into(),
            control_urls: Vec::new(),
            control_ca_file: None,
            heartbeat_interval: std::time::Duration::from_secs(30),
            qemu: None,
        };
        let vms = dir.path().join("vms");
        let on_disk = LocalProvider::with_processes(&vms, config.clone()).unwrap();
        a_plain_vms_firewall_on(&on_disk).await;
        // Records every replica shares.
        let firewall = on_disk
            .create_firewall(&FirewallSpec {
                name: "pvm-3".to_owned(),
                labels: resource_labels(ResourceKind::PlainVm, "pvm_3"),
                rules: ssh_only(),
            })
            .await
            .unwrap();
        let other = LocalProvider::with_processes(&vms, config).unwrap();
        assert_eq!(
            other.get_firewall(&firewall.id).await.unwrap(),
            Some(firewall)
        );
    }

    #[tokio::test]
    async fn a_server_naming_an_unknown_volume_is_refused() {
        let local = LocalProvider::in_memory();
        let mut server = crate::providers::local::servers::tests::spec();
        server.volume_ids = vec!["vol-missing".to_owned()];
        let refused = local.create_server(&server).await.unwrap_err();
        assert_eq!(
            (refused.kind, refused.code.as_deref()),
            (ErrorKind::Permanent, Some("invalid_input"))
        );
        assert!(local.get_server("agt_1").await.unwrap().is_none());
    }
}
