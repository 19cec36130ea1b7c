//! A Plain VM on the local provider: simulated, never run — no process at its creation, its
//! power changes or under the supervisor; its document kept as a 0600 `user-data`; public
//! addresses from the documentation ranges; and documents of the wrong kind refused.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use control_api::usage::ResourceKind;
use tokio::sync::watch;

use super::super::process::ensure_agent;
use super::super::vm::read_vm;
use super::super::{LocalProvider, LocalVmConfig};
use super::USER_DATA;
use super::tests::spec as agent_spec;
use crate::cloud_init::{self, PlainVmDelivery, PlainVmFirstBoot};
use crate::providers::{ErrorKind, ServerSpec, ServerStatus, Servers, resource_labels};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice";

pub(in crate::providers::local) fn plain_spec(id: &str) -> ServerSpec {
    let (_, hash) = cloud_init::one_time_password().unwrap();
    ServerSpec {
        name: id.replace('_', "-"),
        image: "debian-12".to_owned(),
        server_type: Some("cx22".to_owned()),
        location: Some("fsn1".to_owned()),
        labels: resource_labels(ResourceKind::PlainVm, id),
        user_data: Some(
            cloud_init::plain_vm_document(&PlainVmFirstBoot {
                hostname: "web-1.example.com".to_owned(),
                default_user: "root".to_owned(),
                ssh_keys: vec![KEY.to_owned()],
                password_hash: Some(hash),
            })
            .unwrap(),
        ),
        firewall_ids: Vec::new(),
        volume_ids: Vec::new(),
    }
}

fn delivered() -> PlainVmDelivery {
    PlainVmDelivery {
        hostname: "web-1".to_owned(),
        fqdn: Some("web-1.example.com".to_owned()),
        ssh_keys: vec![KEY.to_owned()],
        password_set: true,
    }
}

/// A vm-agent stand-in that leaves a mark when anything starts it.
fn marking_config(dir: &Path) -> LocalVmConfig {
    let program = dir.join("marking-vm-agent");
    let mark = dir.join("started");
    // Not `sleep` as the last command: sh would exec it and lose the command line.
    std::fs::write(
        &program,
        format!("#!/bin/sh\ntouch '{}'\nsleep 60\nexit 0\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    LocalVmConfig {
        vm_agent: program,
        cloudflared: "/bin/true".into(),
        control_urls: vec!["http://127.0.0.1:9".to_owned()],
        control_ca_file: None,
        heartbeat_interval: Duration::from_secs(30),
        qemu: None,
    }
}

/// Processes whose command line names `path`.
fn processes_naming(path: &Path) -> Vec<u32> {
    let wanted = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&wanted))
        })
        .collect()
}

/// The addresses are documentation ones: `192.0.2.0/24` and a /64 of `2001:db8::/32`.
fn assert_documentation_addresses(ipv4: Option<&str>, ipv6: Option<&str>) {
    let ipv4: Ipv4Addr = ipv4.expect("an IPv4 address").parse().unwrap();
    assert_eq!(ipv4.octets()[..3], [192, 0, 2], "{ipv4}");
    assert!(!matches!(ipv4.octets()[3], 0 | 255), "{ipv4}");
    let ipv6 = ipv6.expect("an IPv6 network");
    let network: Ipv6Addr = ipv6
        .strip_suffix("/64")
        .unwrap_or_else(|| panic!("{ipv6} is not a /64"))
        .parse()
        .unwrap();
    let segments = network.segments();
    assert_eq!(segments[..2], [0x2001, 0x0db8], "{ipv6}");
    assert_eq!(segments[4..], [0, 0, 0, 0], "{ipv6}: the /64's own address");
}

#[tokio::test]
async fn a_plain_vm_is_a_record_and_its_seed_and_never_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = marking_config(dir.path());
    let mark = dir.path().join("started");
    let vms = dir.path().join("vms");
    let provider = LocalProvider::with_processes(&vms, config.clone()).unwrap();
    let spec = plain_spec("pvm_1");
    let server = provider.create_server(&spec).await.unwrap();
    assert_eq!(
        (server.id.as_str(), server.status),
        ("pvm_1", ServerStatus::Running)
    );
    assert_documentation_addresses(server.ipv4.as_deref(), server.ipv6.as_deref());
    let vm_dir = vms.join(&server.id);

    // The document, as a NoCloud seed, readable by its owner only; no Agent's files.
    let user_data = vm_dir.join(USER_DATA);
    assert_eq!(
        std::fs::metadata(&user_data).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(&user_data).unwrap(),
        spec.user_data.as_ref().unwrap().0
    );
    assert!(!vm_dir.join("agent.toml").exists() && !vm_dir.join("bootstrap-token").exists());
    let view = provider.vm(&server.id).unwrap();
    assert_eq!(
        (view.running, view.pid, view.bootstrap_token.as_deref()),
        (true, None, None)
    );
    assert_eq!(view.plain, Some(delivered()));
    assert!(read_vm(&vm_dir).unwrap().plain);

    // Another replica sees the same VM, with the same addresses.
    let other = LocalProvider::with_processes(&vms, config.clone()).unwrap();
    assert_eq!(
        other.get_server(&server.id).await.unwrap(),
        Some(server.clone())
    );

    // Power is the record's: off at once, on again, nothing started either way.
    provider.shutdown(&server.id).await.unwrap();
    assert_eq!(
        provider
            .get_server(&server.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        ServerStatus::Off
    );
    provider.power_on(&server.id).await.unwrap();
    provider.power_on(&server.id).await.unwrap();
    let view = provider.vm(&server.id).unwrap();
    assert_eq!((view.running, view.boots, view.pid), (true, 2, None));
    provider.power_off(&server.id).await.unwrap();
    assert!(!provider.vm(&server.id).unwrap().running);
    provider.power_on(&server.id).await.unwrap();

    // The supervisor, which restarts a dead Agent's vm-agent, leaves it alone.
    assert!(!ensure_agent(&vm_dir, &config).unwrap());
    let (stop, stopped) = watch::channel(false);
    let supervising = tokio::spawn({
        let provider = LocalProvider::with_processes(&vms, config.clone()).unwrap();
        async move { provider.supervise(stopped).await }
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.send(true).unwrap();
    supervising.await.unwrap();

    assert!(
        !mark.exists(),
        "something started the vm-agent for a Plain VM"
    );
    assert_eq!(
        processes_naming(&vm_dir),
        Vec::<u32>::new(),
        "no process of the VM"
    );
    assert_eq!(provider.vm(&server.id).unwrap().pid, None);

    provider.delete_server(&server.id).await.unwrap();
    assert_eq!(provider.get_server(&server.id).await.unwrap(), None);
    assert!(provider.vm(&server.id).is_none());
    assert!(!vm_dir.exists(), "its directory, seed included, is gone");
    assert_eq!(
        provider.delete_server(&server.id).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert!(!mark.exists());
}

#[tokio::test]
async fn in_memory_plain_vms_are_records_with_the_same_addresses() {
    let provider = LocalProvider::in_memory();
    let server = provider.create_server(&plain_spec("pvm_1")).await.unwrap();
    assert_documentation_addresses(server.ipv4.as_deref(), server.ipv6.as_deref());
    let again = provider
        .create_server(&plain_spec("pvm_1"))
        .await
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict);
    let view = provider.vm("pvm_1").unwrap();
    assert_eq!((view.pid, view.plain), (None, Some(delivered())));
    provider.shutdown("pvm_1").await.unwrap();
    assert!(!provider.vm("pvm_1").unwrap().running);
    provider.power_on("pvm_1").await.unwrap();
    assert_eq!(provider.vm("pvm_1").unwrap().boots, 2);

    // Deterministic per VM id, whichever the backing; another VM is told apart.
    let dir = tempfile::tempdir().unwrap();
    let on_disk =
        LocalProvider::with_processes(&dir.path().join("vms"), marking_config(dir.path())).unwrap();
    let same = on_disk.create_server(&plain_spec("pvm_1")).await.unwrap();
    assert_eq!((&same.ipv4, &same.ipv6), (&server.ipv4, &server.ipv6));
    let other = provider.create_server(&plain_spec("pvm_2")).await.unwrap();
    assert_documentation_addresses(other.ipv4.as_deref(), other.ipv6.as_deref());
    assert_ne!(other.ipv6, server.ipv6);

    // An Agent's VM reports none, as before.
    let agent = provider.create_server(&agent_spec()).await.unwrap();
    assert_eq!((agent.ipv4, agent.ipv6), (None, None));
    assert_eq!(provider.vm(&agent.id).unwrap().plain, None);

    provider.delete_server("pvm_1").await.unwrap();
    assert_eq!(provider.get_server("pvm_1").await.unwrap(), None);
    assert!(provider.vm("pvm_1").is_none());
}

#[tokio::test]
async fn a_document_of_the_other_kind_is_refused_and_nothing_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms");
    let on_disk = LocalProvider::with_processes(&vms, marking_config(dir.path())).unwrap();
    let in_memory = LocalProvider::in_memory();
    let agent_document = agent_spec().user_data;
    let plain_document = plain_spec("pvm_1").user_data;
    let mut cases = Vec::new();
    let mut agent_for_plain = plain_spec("pvm_1");
    agent_for_plain.user_data.clone_from(&agent_document);
    cases.push(("a Plain VM with an Agent's document", agent_for_plain));
    let mut nothing = plain_spec("pvm_1");
    nothing.user_data = None;
    cases.push(("a Plain VM with no document", nothing));
    let mut other = plain_spec("pvm_1");
    other.user_data = Some(crate::providers::Secret(
        "#cloud-config\n{\"hostname\": \"web\", \"runcmd\": [\"curl x | sh\"]}\n".to_owned(),
    ));
    cases.push(("a Plain VM with more than its template", other));
    let mut plain_for_agent = agent_spec();
    plain_for_agent.user_data.clone_from(&plain_document);
    cases.push(("an Agent with a Plain VM's document", plain_for_agent));
    for (what, spec) in cases {
        for provider in [&on_disk, &in_memory] {
            let refused = provider.create_server(&spec).await.unwrap_err();
            assert_eq!(
                (refused.kind, refused.code.as_deref()),
                (ErrorKind::Permanent, Some("invalid_input")),
                "{what}: {refused}"
            );
            let id = &spec.labels[crate::providers::ID_LABEL];
            assert_eq!(provider.get_server(id).await.unwrap(), None, "{what}");
        }
    }
    assert!(!dir.path().join("started").exists());
    assert_eq!(
        std::fs::read_dir(&vms)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count(),
        0,
        "no VM directory"
    );
}

/// A `vm.json` written before Plain VMs existed has no `plain` key: it is an Agent's.
#[test]
fn an_earlier_releases_vm_is_an_agents() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vm.json"),
        r#"{"agent_id": "agt_1", "name": "agt-1", "image_ref": "local-1", "running": true, "boots": 1}"#,
    )
    .unwrap();
    let vm = read_vm(dir.path()).unwrap();
    assert!(!vm.plain);
    assert_eq!(vm.server().ipv4, None);
}
