//! Pins the JSON of every wire type. A change that alters a golden file alters the contract
//! with dashboards and agents already deployed: make it additive, then regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p control-api --test golden` and review the diff.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // a test: unwraps fail it, env is its switch

use std::collections::BTreeMap;
use std::path::PathBuf;

use control_api::accounts::{Account, CreateAccount, CreateToken, CreatedToken, TokenRole};
use control_api::agent::{
    CloneReport, CloneState, Heartbeat, HeartbeatAck, HostMetrics, RegisterRequest,
    RegisterResponse, SliceReport, SliceState, TunnelReport, TunnelState,
};
use control_api::agent_config::{
    AgentToml, CloneFromToml, CloudflaredToml, HeartbeatToml, SliceToml,
};
use control_api::agents::{
    Agent, AgentList, AgentOperation, AgentState, CloneAgent, ImagePin, PeriodState,
    ProvisionAgent, StatePeriod, Timeline, TransferAgent,
};
use control_api::audit::{AuditAction, AuditEvent, AuditPage, AuditVerification, BrokenLink};
use control_api::images::{Image, ImageList, RegisterImage, SetCurrentImage};
use control_api::plain_vms::{
    FirewallRuleInput, FirewallRules, PlainVm, PlainVmKey, PlainVmList, PlainVmState,
    ProvisionPlainVm, TransferPlainVm,
};
use control_api::problem::{FieldError, Problem};
use control_api::usage::{ResourceKind, UsageReport, UsageRow};
use control_api::vault::{AddVaultKey, VaultKey};
use control_api::{Day, Health, Timestamp, UPGRADE_NOTE};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
    let rendered = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(rendered, golden, "the JSON of {name} changed");
    let parsed: T = serde_json::from_str(&golden).unwrap();
    assert_eq!(&parsed, value, "{name} does not read back");
}

fn pin() -> ImagePin {
    ImagePin {
        image_id: "img_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
        version: "2026.11.0".to_owned(),
        agent_version: "0.1.0".to_owned(),
        manifest_digest: format!("sha256:{}", "ab".repeat(32)),
        reference: "123456789".to_owned(),
        env: BTreeMap::from([("PLATFORM_RELEASE".to_owned(), "2026.11.0".to_owned())]),
    }
}

fn agent() -> Agent {
    Agent {
        id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
        account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
        name: "dev-box".to_owned(),
        provider: "hetzner".to_owned(),
        state: AgentState::Running,
        operation: Some(AgentOperation::Stop),
        last_error: None,
        image: pin(),
        outdated: true,
        upgrade_note: Some(UPGRADE_NOTE.to_owned()),
        provisioned_at: at("2026-11-20T09:00:00Z"),
        destroyed_at: None,
        healthy: Some(true),
        last_heartbeat_at: Some(at("2026-11-20T10:14:30Z")),
        cloned_from: None,
        cloning_to: Some("agt_01JDQ6VA0000000000000000AB".to_owned()),
        support: None,
    }
}

/// An Agent as `GET /api/agents/{id}` shows it, with its support view.
fn agent_with_support() -> Agent {
    Agent {
        support: Some(control_api::agents::AgentSupport {
            heartbeat_at: at("2026-11-20T10:14:30Z"),
            boot_id: "6f1c7c3e-5b0e-4d43-9d5a-2f8d1e0c9b11".to_owned(),
            sequence: 149,
            agent_version: "0.1.0".to_owned(),
            image_version: "2026.11.0".to_owned(),
            agent_uptime_s: 4_470,
            tunnel: control_api::agent::TunnelReport {
                state: control_api::agent::TunnelState::Ready,
                ready_connections: 4,
                restarts: 2,
                crash_loop: false,
                last_exit: Some(137),
                since: Some(at("2026-11-20T10:02:11Z")),
            },
            slice: control_api::agent::SliceReport {
                state: control_api::agent::SliceState::NearlyFull,
                free_bytes: Some(1_200_000_000),
                total_bytes: Some(53_687_091_200),
                free_inodes: Some(3_100_000),
                total_inodes: Some(3_276_800),
            },
        }),
        ..agent()
    }
}

#[test]
fn agents() {
    check("agent", &agent());
    check("agent_with_support", &agent_with_support());
    check(
        "agent_list",
        &AgentList {
            items: vec![agent()],
            next_cursor: Some("agt_01JDQ6VA0000000000000000AA".to_owned()),
        },
    );
    check(
        "provision_agent",
        &ProvisionAgent {
            name: "dev-box".to_owned(),
            account_id: Some("acc_01JDQ6V9000000000000000000".to_owned()),
        },
    );
    check(
        "clone_agent",
        &CloneAgent {
            name: Some("dev-box-clone".to_owned()),
        },
    );
    check(
        "transfer_agent",
        &TransferAgent {
            to_account: "acc_01JDQ6V9000000000000000001".to_owned(),
        },
    );
    check(
        "timeline",
        &Timeline {
            agent_id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
            periods: vec![
                StatePeriod {
                    account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
                    state: PeriodState::Paused,
                    started_at: at("2026-11-20T09:00:00Z"),
                    ended_at: Some(at("2026-11-20T09:00:42.5Z")),
                },
                StatePeriod {
                    account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
                    state: PeriodState::Running,
                    started_at: at("2026-11-20T09:00:42.5Z"),
                    ended_at: None,
                },
            ],
        },
    );
}

#[test]
fn accounts_and_images() {
    let created_at = at("2026-11-20T08:00:00Z");
    check(
        "account",
        &Account {
            id: "acc_01JDQ6V9000000000000000000".to_owned(),
            name: "Acme".to_owned(),
            created_at,
        },
    );
    check(
        "create_account",
        &CreateAccount {
            name: "Acme".to_owned(),
        },
    );
    check(
        "create_token",
        &CreateToken {
            label: Some("dashboard".to_owned()),
        },
    );
    check(
        "created_token",
        &CreatedToken {
            id: "tok_01JDQ6V9000000000000000000".to_owned(),
            role: TokenRole::Account,
            account_id: Some("acc_01JDQ6V9000000000000000000".to_owned()),
            label: Some("dashboard".to_owned()),
            created_at,
            token: format!("ctl_tok_01JDQ6V9000000000000000000_{}", "0".repeat(64)),
        },
    );
    let refs = BTreeMap::from([
        (
            "fly".to_owned(),
            format!("registry.fly.io/agent@sha256:{}", "cd".repeat(32)),
        ),
        ("hetzner".to_owned(), "123456789".to_owned()),
    ]);
    let register = RegisterImage {
        version: "2026.11.0".to_owned(),
        agent_version: "0.1.0".to_owned(),
        manifest_digest: format!("sha256:{}", "ab".repeat(32)),
        refs: refs.clone(),
        env: BTreeMap::new(),
    };
    check("register_image", &register);
    let image = Image {
        id: "img_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
        version: register.version,
        agent_version: register.agent_version,
        manifest_digest: register.manifest_digest,
        refs,
        env: BTreeMap::new(),
        created_at,
        current: true,
    };
    check("image", &image);
    check("image_list", &ImageList { items: vec![image] });
    check(
        "set_current_image",
        &SetCurrentImage {
            image_id: "img_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
        },
    );
}

#[test]
fn usage_audit_and_errors() {
    check(
        "usage_report",
        &UsageReport {
            from: Day::parse("2026-11-20").unwrap(),
            to: Day::parse("2026-11-21").unwrap(),
            rolled_up_at: Some(at("2026-11-21T12:00:00Z")),
            rows: vec![UsageRow {
                day: Day::parse("2026-11-20").unwrap(),
                resource_kind: ResourceKind::Agent,
                resource_id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
                account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
                running_s: 50_400,
                paused_s: 3_600,
            }],
        },
    );
    let event = AuditEvent {
        seq: 7,
        id: "evt_01JDQ6V9000000000000000000".to_owned(),
        at: at("2026-11-20T10:00:00Z"),
        actor: "token:tok_01JDQ6V9000000000000000000".to_owned(),
        action: AuditAction::AgentTransfer,
        resource_kind: ResourceKind::Agent,
        resource_id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
        account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
        to_account_id: Some("acc_01JDQ6V9000000000000000001".to_owned()),
        request_id: Some("req_01JDQ6V9000000000000000000".to_owned()),
        details: serde_json::json!({"state": "running"}),
        prev_hash: "0".repeat(64),
        hash: "f".repeat(64),
    };
    check(
        "audit_page",
        &AuditPage {
            items: vec![event],
            next_cursor: Some("7".to_owned()),
        },
    );
    check(
        "audit_verification_broken",
        &AuditVerification {
            ok: false,
            events_checked: 3,
            head_hash: None,
            first_bad: Some(BrokenLink {
                seq: 4,
                event_id: Some("evt_01JDQ6V9000000000000000004".to_owned()),
                reason: "its content does not match its hash".to_owned(),
            }),
        },
    );
    check(
        "problem",
        &Problem {
            kind: "/problems/invalid-input".to_owned(),
            title: "Invalid input".to_owned(),
            status: 422,
            detail: "name: must be 1 to 63 characters long, got 200".to_owned(),
            instance: Some("/api/agents".to_owned()),
            request_id: Some("req_01JDQ6V9000000000000000000".to_owned()),
            errors: vec![FieldError {
                field: "name".to_owned(),
                message: "must be 1 to 63 characters long, got 200".to_owned(),
            }],
        },
    );
    check(
        "health",
        &Health {
            status: "ok".to_owned(),
            detail: None,
        },
    );
}

/// Documents from older peers, without the optional fields, still read.
#[test]
fn optional_fields_may_be_absent() {
    let agent: Agent = serde_json::from_value(serde_json::json!({
        "id": "agt_1", "account_id": "acc_1", "name": "a", "provider": "local", "state": "paused",
        "image": {"image_id": "img_1", "version": "v", "agent_version": "1", "manifest_digest": "sha256:x",
                  "reference": "r", "env": {}},
        "outdated": false, "provisioned_at": "2026-11-20T09:00:00Z"
    }))
    .unwrap();
    assert_eq!((agent.operation, agent.destroyed_at), (None, None));
}

/// What vm-agent sends: old agents in the field keep sending these shapes.
#[test]
fn the_agent_protocol() {
    check(
        "register_request",
        &RegisterRequest {
            agent_id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
            bootstrap_token: "bootstrap-5f2c8e1a9b7d4c3e".to_owned(),
            boot_id: "2c7e4c9a-1d3b-4f5e-8a6b-0c9d8e7f6a5b".to_owned(),
            agent_version: "0.1.0".to_owned(),
            image_version: "2026.11.0".to_owned(),
        },
    );
    check(
        "register_response",
        &RegisterResponse {
            agent_id: "agt_01JDQ6VA0000000000000000AA".to_owned(),
            credential: "cred_0123456789abcdef".to_owned(),
            heartbeat_interval_s: 30,
        },
    );
    check(
        "heartbeat",
        &Heartbeat {
            agent_id: Some("agt_01JDQ6VA0000000000000000AA".to_owned()),
            boot_id: "2c7e4c9a-1d3b-4f5e-8a6b-0c9d8e7f6a5b".to_owned(),
            sequence: 42,
            agent_version: "0.1.0".to_owned(),
            image_version: "2026.11.0".to_owned(),
            agent_uptime_s: 1_260,
            cloudflared: TunnelReport {
                state: TunnelState::Ready,
                ready_connections: 4,
                restarts: 1,
                crash_loop: false,
                last_exit: Some(1),
                since: Some(at("2026-11-20T09:00:30Z")),
            },
            slice: SliceReport {
                state: SliceState::Mounted,
                free_bytes: Some(42_000_000_000),
                total_bytes: Some(53_687_091_200),
                free_inodes: Some(3_100_000),
                total_inodes: Some(3_276_800),
            },
            host: HostMetrics {
                cpus: 2,
                load_centi: [12, 8, 5],
                memory_total_bytes: 4_110_000_000,
                memory_available_bytes: 3_200_000_000,
                root_free_bytes: 30_000_000_000,
                uptime_s: 1_300,
            },
            clone: None,
        },
    );
    check(
        "heartbeat_ack",
        &HeartbeatAck {
            heartbeat_interval_s: 30,
        },
    );
    let redacted = format!(
        "{:?}",
        RegisterRequest {
            agent_id: "agt_1".to_owned(),
            bootstrap_token: "secret-bootstrap".to_owned(),
            boot_id: String::new(),
            agent_version: String::new(),
            image_version: String::new(),
        }
    );
    assert!(!redacted.contains("secret-bootstrap"), "{redacted}");
}

/// A clone's heartbeat while its slice is being copied on the VM.
#[test]
fn a_clones_heartbeat() {
    check(
        "heartbeat_clone",
        &Heartbeat {
            agent_id: Some("agt_01JDQ6VA0000000000000000AB".to_owned()),
            boot_id: "5b0e0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d".to_owned(),
            sequence: 3,
            agent_version: "0.1.0".to_owned(),
            image_version: "2026.12.0".to_owned(),
            agent_uptime_s: 60,
            cloudflared: TunnelReport {
                state: TunnelState::Ready,
                ready_connections: 4,
                restarts: 0,
                crash_loop: false,
                last_exit: None,
                since: Some(at("2026-12-01T09:00:10Z")),
            },
            slice: SliceReport {
                state: SliceState::Mounted,
                free_bytes: Some(50_000_000_000),
                total_bytes: Some(53_687_091_200),
                free_inodes: Some(3_270_000),
                total_inodes: Some(3_276_800),
            },
            host: HostMetrics {
                cpus: 2,
                load_centi: [80, 40, 10],
                memory_total_bytes: 4_110_000_000,
                memory_available_bytes: 3_500_000_000,
                root_free_bytes: 30_000_000_000,
                uptime_s: 70,
            },
            clone: Some(CloneReport {
                source_agent: "agt_01JDQ6VA0000000000000000AA".to_owned(),
                state: CloneState::Copying,
                files_done: 1_200,
                files_total: Some(5_000),
                bytes_done: 400_000_000,
                bytes_total: Some(2_000_000_000),
                error: None,
            }),
        },
    );
}

/// An `agent.toml` with every key set.
fn agent_toml() -> AgentToml {
    AgentToml {
        agent_id: "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
        image_version: "2026.11.0".to_owned(),
        control_url: "https://control.example".to_owned(),
        allow_insecure_control: Some(false),
        control_ca_file: Some("/etc/vm-agent/control-ca.pem".into()),
        bootstrap_token_file: Some("/etc/vm-agent/bootstrap-token".into()),
        credential_file: Some("/var/lib/vm-agent/credential".into()),
        status_socket: Some("/run/vm-agent/status.sock".into()),
        log_level: Some("debug".to_owned()),
        cloudflared: CloudflaredToml {
            binary: Some("/usr/bin/cloudflared".into()),
            token_file: Some("/etc/vm-agent/tunnel-token".into()),
            metrics: Some("127.0.0.1:20241".to_owned()),
            extra_args: vec!["--grace-period".to_owned(), "1s".to_owned()],
            ready_poll_ms: Some(2_000),
            unready_restart_after_s: Some(120),
            stop_grace_s: Some(35),
            backoff_initial_ms: Some(1_000),
            backoff_max_ms: Some(60_000),
            stable_after_s: Some(120),
            crash_loop_restarts: Some(5),
            crash_loop_window_s: Some(600),
            failed_retry_s: Some(300),
            log_lines_per_minute: Some(120),
        },
        slice: SliceToml {
            path: Some("/data/home-coder".into()),
            owner: Some("coder".to_owned()),
            mountinfo: Some("/proc/self/mountinfo".into()),
            check_interval_s: Some(30),
            nearly_full_percent: Some(95),
        },
        heartbeat: HeartbeatToml {
            interval_s: Some(30),
            timeout_s: Some(10),
            backoff_max_s: Some(300),
        },
        clone_from: Some(CloneFromToml {
            source_agent: "agt_01JDQ6VA0000000000000000AA".to_owned(),
            device: Some("/dev/disk/by-id/scsi-0HC_Volume_100001".into()),
            directory: None,
        }),
    }
}

/// vm-agent reads the file control writes through the same type; this pins its text, which
/// agents of earlier images must keep reading (they refuse unknown keys).
#[test]
fn the_agent_config_file() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/agent.toml");
    let rendered = agent_toml().to_toml().unwrap();
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(rendered, golden, "the text of agent.toml changed");
    assert_eq!(
        toml::from_str::<AgentToml>(&golden).unwrap(),
        agent_toml(),
        "agent.toml does not read back"
    );
}

fn plain_vm() -> PlainVm {
    PlainVm {
        id: "pvm_01JDQ6VA0000000000000000AB".to_owned(),
        account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
        name: "web".to_owned(),
        hostname: "web.example.com".to_owned(),
        provider: "hetzner".to_owned(),
        server_type: "cx22".to_owned(),
        location: "fsn1".to_owned(),
        image: "debian-12".to_owned(),
        default_user: "root".to_owned(),
        state: PlainVmState::Stopped,
        operation: Some(AgentOperation::Provision),
        last_error: None,
        ipv4: Some("203.0.113.10".to_owned()),
        ipv6: Some("2001:db8:1234::/64".to_owned()),
        ssh_keys: vec![PlainVmKey {
            vault_key_id: "key_01JDQ6VA0000000000000000AC".to_owned(),
            name: "alice".to_owned(),
            fingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".to_owned(),
        }],
        one_time_password_set: true,
        one_time_password: Some("abcdefghijkmnpqrstuv".to_owned()),
        provisioned_at: at("2026-11-20T09:00:00Z"),
        destroyed_at: None,
    }
}

#[test]
fn plain_vms_and_the_vault() {
    check("plain_vm", &plain_vm());
    check(
        "plain_vm_list",
        &PlainVmList {
            items: vec![PlainVm {
                one_time_password: None,
                ..plain_vm()
            }],
            next_cursor: None,
        },
    );
    check(
        "provision_plain_vm",
        &ProvisionPlainVm {
            name: "web".to_owned(),
            hostname: Some("web.example.com".to_owned()),
            server_type: Some("cx22".to_owned()),
            location: Some("fsn1".to_owned()),
            image: Some("debian-12".to_owned()),
            vault_key_ids: vec!["key_01JDQ6VA0000000000000000AC".to_owned()],
            one_time_password: true,
            account_id: None,
        },
    );
    check(
        "transfer_plain_vm",
        &TransferPlainVm {
            to_account: "acc_01JDQ6V9000000000000000001".to_owned(),
        },
    );
    check(
        "firewall_rules",
        &FirewallRules {
            rules: vec![FirewallRuleInput {
                direction: "in".to_owned(),
                protocol: "tcp".to_owned(),
                port: Some("22".to_owned()),
                source_ips: vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()],
                destination_ips: Vec::new(),
                description: Some("ssh".to_owned()),
            }],
        },
    );
    check(
        "vault_key",
        &VaultKey {
            id: "key_01JDQ6VA0000000000000000AC".to_owned(),
            account_id: "acc_01JDQ6V9000000000000000000".to_owned(),
            name: "alice".to_owned(),
            algorithm: "ssh-ed25519".to_owned(),
            bits: 256,
            fingerprint: "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".to_owned(),
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop".to_owned(),
            comment: Some("alice@laptop".to_owned()),
            created_at: at("2026-11-20T08:30:00Z"),
        },
    );
    check(
        "add_vault_key",
        &AddVaultKey {
            name: "alice".to_owned(),
            public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop".to_owned(),
            account_id: None,
        },
    );
}
