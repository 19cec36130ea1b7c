//! The first-boot document control gives an Agent's server passes cloud-init's own schema check
//! (`cloud-init schema`, from Debian's cloud-init, which CI installs), stays under Hetzner's
//! limit on user data, and carries nothing but its per-Agent files: that cloud-init accepts
//! unknown top-level keys silently, so the exact key set is checked here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::process::Command;

use control::cloud_init::{self, AgentFirstBoot, AgentIdentity};
use control::providers::Secret;
use test_support::have_program;

fn document(tunnel_token: Option<&str>) -> Secret {
    cloud_init::agent_document(&AgentFirstBoot {
        identity: AgentIdentity {
            agent_id: "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
            image_version: "2026.12.0".to_owned(),
        },
        control_url: "https://control.example.com".to_owned(),
        bootstrap_token: Secret(format!("agb_{}", "a".repeat(64))),
        tunnel_token: tunnel_token.map(|t| Secret(t.to_owned())),
        clone_from: None,
    })
    .unwrap()
}

#[test]
fn an_agents_document_passes_cloud_inits_schema_and_carries_only_its_files() {
    // A real tunnel token is a base64 JSON object of about 180 characters, quotes and all.
    let token = format!("eyJhIjoi{}\"\\n'", "Q".repeat(180));
    for document in [document(Some(&token)), document(None)] {
        assert!(document.0.len() < cloud_init::MAX_USER_DATA);
        let body: serde_json::Value =
            serde_json::from_str(document.0.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["write_files"]));
        for file in body["write_files"].as_array().unwrap() {
            assert_eq!(file["permissions"], "0600", "{file}");
            assert!(file["path"].as_str().unwrap().starts_with("/etc/vm-agent/"));
        }
        passes_cloud_init_schema(&document);
    }
}

/// `cloud-init schema` accepts the document (when cloud-init is installed; CI installs it).
fn passes_cloud_init_schema(document: &Secret) {
    if !have_program("cloud-init") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(&path, &document.0).unwrap();
    let checked = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "cloud-init schema refused the document:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// A Plain VM's document: hostname (and fqdn), the chosen keys, a one-time password's hash when
/// asked — exactly those keys, nothing of ours (no vm-agent, no cloudflared, no files, no
/// packages, no commands), and it passes cloud-init's schema check.
#[test]
fn a_plain_vms_document_is_one_shot_and_nothing_else() {
    let allowed = BTreeSet::from(["hostname", "fqdn", "ssh_authorized_keys", "chpasswd"]);
    let (password, hash) = cloud_init::one_time_password().unwrap();
    let keys = vec![
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice".to_owned(),
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHwf2HMM5TRXvo2SQJjsNkiDD5KqiiNjrGVv3UUh+mMT5RHxiRtOnlqvjhQtBq0VpmpCV/PwUdhOig4vkbqAcEc= bob".to_owned(),
    ];
    for (hostname, keys, hash) in [
        ("web-1.example.com", keys.clone(), Some(hash.clone())),
        ("db", keys, None),
        ("bare", Vec::new(), None),
    ] {
        let document = cloud_init::plain_vm_document(&cloud_init::PlainVmFirstBoot {
            hostname: hostname.to_owned(),
            default_user: "root".to_owned(),
            ssh_keys: keys,
            password_hash: hash,
        })
        .unwrap();
        assert!(document.0.len() < cloud_init::MAX_USER_DATA);
        assert!(!document.0.contains(&password.0), "never the plaintext");
        for ours in [
            "vm-agent",
            "cloudflared",
            "write_files",
            "runcmd",
            "packages",
        ] {
            assert!(
                !document.0.contains(ours),
                "{ours} in {hostname}'s document"
            );
        }
        let body: serde_json::Value =
            serde_json::from_str(document.0.strip_prefix("#cloud-config\n").unwrap()).unwrap();
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(keys.is_subset(&allowed), "{keys:?}");
        if hostname == "web-1.example.com" {
            assert_eq!(keys, allowed, "everything asked for is there");
        }
        passes_cloud_init_schema(&document);
    }
}
