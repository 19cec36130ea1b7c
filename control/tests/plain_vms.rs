//! Plain VMs over the API, against the Hetzner fake (the real API's shapes): a server with
//! public IPv4 and IPv6, its own firewall passing TCP/22 only and a one-shot cloud-init holding
//! the hostname, the chosen Vault keys and only the hash of the one-time password; the
//! firewall read live and replaced whole, bad rulesets refused with nothing sent; stop, start,
//! transfer and destroy, with destroy and transfer (only) in the audit chain and usage billed
//! for existence; bad requests refused with nothing made.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use axum::http::Method;
use control::app::Settings;
use control::providers::http::RetryPolicy;
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake};
use serde_json::{Value, json};
use ssh_key::PublicKey;
use ssh_key::public::Ed25519PublicKey;
use test_support::TestDb;

struct Rig {
    hetzner: HetznerFake,
    cloudflare: CloudflareFake,
    h: common::Harness,
    account: String,
    token: String,
    key_id: String,
    key_line: String,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        base: Duration::from_millis(5),
        cap: Duration::from_millis(20),
        max_wait: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

/// An Ed25519 public key line, different for each `seed`.
fn key_line(seed: u8, comment: &str) -> String {
    let mut key = PublicKey::from(Ed25519PublicKey([seed; 32]));
    key.set_comment(comment);
    key.to_openssh().unwrap()
}

async fn rig(db: TestDb) -> Rig {
    rig_with(db, Settings::default()).await
}

async fn rig_with(db: TestDb, settings: Settings) -> Rig {
    let hetzner = HetznerFake::start(hz::Options {
        action_delay: Duration::from_millis(10),
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let cloudflare = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let providers = common::fake_clouds(&hetzner, &cloudflare, policy());
    let h = common::Harness::with_providers(db, |_| providers, settings).await;
    let (account, token) = h.account("Acme").await;
    let key_line = key_line(7, "alice@laptop");
    let key = h
        .post(
            "/api/vault/keys",
            &token,
            json!({"name": "alice", "public_key": key_line}),
        )
        .await;
    assert_eq!(key.status, 201, "{:#}", key.body);
    Rig {
        hetzner,
        cloudflare,
        h,
        account,
        token,
        key_id: key.body["id"].as_str().unwrap().to_owned(),
        key_line,
    }
}

impl Rig {
    async fn view(&self, id: &str) -> Value {
        self.h
            .get(&format!("/api/plain-vms/{id}"), &self.h.operator)
            .await
            .body
    }

    /// Runs the due jobs, letting the provider's time pass, until the VM is `state` with no
    /// operation under way; panics after 100 runs.
    async fn settle(&self, id: &str, state: &str) -> Value {
        for _ in 0..100 {
            self.h.run_jobs().await;
            let view = self.view(id).await;
            if view["state"] == state && view["operation"].is_null() {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.h.advance(6_000);
        }
        panic!(
            "plain VM {id} never became {state}: {:#}",
            self.view(id).await
        );
    }

    async fn act(&self, method: Method, id: &str, action: &str, token: &str) -> common::Reply {
        let path = if action.is_empty() {
            format!("/api/plain-vms/{id}")
        } else {
            format!("/api/plain-vms/{id}/{action}")
        };
        self.h.call(method, &path, Some(token), None).await
    }

    /// Provisions a Plain VM with the rig's key and a password, runs it to running; returns
    /// its id and the password shown.
    async fn running_vm(&self, name: &str) -> (String, String) {
        let made = self
            .h
            .post(
                "/api/plain-vms",
                &self.token,
                json!({"name": name, "vault_key_ids": [self.key_id], "one_time_password": true}),
            )
            .await;
        assert_eq!(made.status, 202, "{:#}", made.body);
        let id = made.body["id"].as_str().unwrap().to_owned();
        self.settle(&id, "running").await;
        (
            id,
            made.body["one_time_password"].as_str().unwrap().to_owned(),
        )
    }
}

/// The document's body (the JSON after `#cloud-config`).
fn document(user_data: &str) -> Value {
    serde_json::from_str(user_data.strip_prefix("#cloud-config\n").unwrap()).unwrap()
}

#[tokio::test]
async fn a_plain_vm_is_a_server_with_its_own_firewall_and_a_one_shot_cloud_init() {
    provisions(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_plain_vm_is_a_server_with_its_own_firewall_and_a_one_shot_cloud_init_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        provisions(db).await;
    }
}

async fn provisions(db: TestDb) {
    let rig = rig(db).await;
    let h = &rig.h;
    let request = json!({
        "name": "web",
        "hostname": "web.example.com",
        "vault_key_ids": [rig.key_id],
        "one_time_password": true,
    });
    let made = h
        .call(
            Method::POST,
            "/api/plain-vms",
            Some(&rig.token),
            Some(request.clone()),
        )
        .await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    let password = made.body["one_time_password"].as_str().unwrap().to_owned();
    assert_eq!(password.len(), 20);
    assert_eq!(
        (
            &made.body["state"],
            &made.body["operation"],
            &made.body["one_time_password_set"]
        ),
        (&json!("stopped"), &json!("provision"), &json!(true))
    );
    assert_eq!(
        (
            &made.body["server_type"],
            &made.body["location"],
            &made.body["image"],
            &made.body["default_user"]
        ),
        (
            &json!("cx22"),
            &json!("fsn1"),
            &json!("debian-12"),
            &json!("root")
        ),
        "the defaults"
    );
    let fingerprint = made.body["ssh_keys"][0]["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(
        h.get(&format!("/api/plain-vms/{id}"), &rig.token)
            .await
            .body
            .get("one_time_password")
            .is_none(),
        "shown once: not in a read"
    );

    let view = rig.settle(&id, "running").await;

    // Exactly one server and one firewall, ours, wired together; no volume.
    let servers = rig.hetzner.control().servers();
    let firewalls = rig.hetzner.control().firewalls();
    assert_eq!((servers.len(), firewalls.len()), (1, 1));
    assert!(rig.hetzner.control().volumes().is_empty());
    let (server, firewall) = (&servers[0], &firewalls[0]);
    assert_eq!(server.labels["control/kind"], "plain_vm");
    assert_eq!(server.labels["control/id"], id);
    assert_eq!(firewall.labels, server.labels);
    assert_eq!(
        (server.server_type.as_str(), server.location.as_str()),
        ("cx22", "fsn1")
    );
    assert_eq!(server.firewalls, vec![firewall.id]);
    assert_eq!(firewall.servers, vec![server.id]);
    let rules = &firewall.rules;
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert_eq!(
        (
            rules[0].direction.as_str(),
            rules[0].protocol.as_str(),
            rules[0].port.as_deref(),
            rules[0].source_ips.clone()
        ),
        (
            "in",
            "tcp",
            Some("22"),
            vec!["0.0.0.0/0".to_owned(), "::/0".to_owned()]
        ),
        "inbound TCP/22 only, by default"
    );
    assert_eq!(view["id"], id);
    assert!(
        view["ipv4"].is_string() && view["ipv6"].is_string(),
        "{view:#}"
    );

    // The one-shot document: exactly its keys, the hash and never the password.
    let user_data = server.user_data.as_deref().unwrap();
    assert!(!user_data.contains(&password), "no plaintext password");
    let lowered = user_data.to_ascii_lowercase();
    assert!(!lowered.contains("vm-agent") && !lowered.contains("cloudflared"));
    let body = document(user_data);
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["chpasswd", "fqdn", "hostname", "ssh_authorized_keys"]
    );
    assert_eq!(
        (&body["hostname"], &body["fqdn"]),
        (&json!("web"), &json!("web.example.com"))
    );
    assert_eq!(body["ssh_authorized_keys"], json!([rig.key_line]));
    assert_eq!(body["chpasswd"]["expire"], true);
    assert_eq!(body["chpasswd"]["users"][0]["name"], "root");
    let hash = body["chpasswd"]["users"][0]["password"].as_str().unwrap();
    assert!(hash.starts_with("$6$"), "SHA-512 crypt: {hash}");
    assert!(
        sha_crypt::sha512_check(&password, hash).is_ok(),
        "the hash verifies"
    );

    // Control stores neither the password nor its hash.
    let snapshot = h.snapshot().await;
    assert!(
        !snapshot.contains(&password),
        "the password is in the database"
    );
    assert!(!snapshot.contains(hash), "the hash is in the database");

    // A retry under the same Idempotency-Key replays the answer without the password.
    let key = "provision-web-1";
    let headers = [
        ("idempotency-key", key.to_owned()),
        ("content-type", "application/json".to_owned()),
    ];
    let body = json!({"name": "db", "vault_key_ids": [rig.key_id], "one_time_password": true});
    let keyed = || {
        h.raw(
            Method::POST,
            "/api/plain-vms",
            Some(&rig.token),
            &headers,
            body.to_string().into_bytes(),
        )
    };
    let first = keyed().await;
    assert_eq!(first.status, 202, "{:#}", first.body);
    assert!(first.body["one_time_password"].is_string());
    let again = keyed().await;
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], first.body["id"]);
    assert!(
        again.body.get("one_time_password").is_none(),
        "{:#}",
        again.body
    );
    let shown = first.body["one_time_password"].as_str().unwrap();
    assert!(!h.snapshot().await.contains(shown));

    // Provisioning is a timestamp, not an audit event.
    let events = h
        .get(&format!("/api/audit?resource_id={id}"), &h.operator)
        .await;
    assert_eq!(events.status, 200);
    assert_eq!(events.body["items"], json!([]), "{:#}", events.body);
    assert!(view["provisioned_at"].is_string());

    // Deleting the key from the Vault leaves the VM's record of it alone.
    let gone = h
        .delete(&format!("/api/vault/keys/{}", rig.key_id), &rig.token)
        .await;
    assert_eq!(gone.status, 200);
    assert_eq!(
        rig.view(&id).await["ssh_keys"][0]["fingerprint"],
        fingerprint
    );
}

#[tokio::test]
async fn stop_start_transfer_and_destroy_bill_existence_and_audit_only_destroy_and_transfer() {
    lifecycle(TestDb::sqlite()).await;
}

#[tokio::test]
async fn stop_start_transfer_and_destroy_bill_existence_and_audit_only_destroy_and_transfer_on_postgres()
 {
    if let Some(db) = TestDb::postgres().await {
        lifecycle(db).await;
    }
}

async fn lifecycle(db: TestDb) {
    let rig = rig(db).await;
    let h = &rig.h;
    let (id, _) = rig.running_vm("web").await;
    let started = h.now();

    h.advance(3_600_000);
    let stop = rig.act(Method::POST, &id, "stop", &rig.token).await;
    assert_eq!(stop.status, 202, "{:#}", stop.body);
    rig.settle(&id, "stopped").await;
    assert_eq!(rig.hetzner.control().servers()[0].status, "off");
    let again = rig.act(Method::POST, &id, "stop", &rig.token).await;
    again.problem(409, None);

    h.advance(3_600_000);
    let start = rig.act(Method::POST, &id, "start", &rig.token).await;
    assert_eq!(start.status, 202, "{:#}", start.body);
    rig.settle(&id, "running").await;
    assert_eq!(rig.hetzner.control().servers()[0].status, "running");

    // Transfer: operators only; an audit event; nothing at the provider changes.
    let (other, other_token) = h.account("Globex").await;
    let refused = h
        .post(
            &format!("/api/plain-vms/{id}/transfer"),
            &rig.token,
            json!({"to_account": other}),
        )
        .await;
    refused.problem(403, None);
    let moved = h
        .post(
            &format!("/api/plain-vms/{id}/transfer"),
            &h.operator,
            json!({"to_account": other}),
        )
        .await;
    assert_eq!(moved.status, 200, "{:#}", moved.body);
    assert_eq!(moved.body["account_id"], other);
    rig.act(Method::GET, &id, "", &rig.token)
        .await
        .problem(404, None);
    assert_eq!(
        rig.act(Method::GET, &id, "", &other_token).await.status,
        200
    );

    h.advance(3_600_000);
    let destroy = rig.act(Method::DELETE, &id, "", &other_token).await;
    assert_eq!(destroy.status, 202, "{:#}", destroy.body);
    let view = rig.settle(&id, "destroyed").await;
    assert!(view["destroyed_at"].is_string());
    assert!(
        rig.hetzner.control().servers().is_empty(),
        "the server is gone"
    );
    assert!(
        rig.hetzner.control().firewalls().is_empty(),
        "its firewall with it"
    );

    let events = h
        .get(&format!("/api/audit?resource_id={id}"), &h.operator)
        .await;
    let actions: Vec<&str> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["plain_vm.transfer", "plain_vm.destroy"],
        "{:#}",
        events.body
    );
    let verified = h.get("/api/audit/verify", &h.operator).await;
    assert_eq!(verified.body["ok"], true, "{:#}", verified.body);

    // Nothing of ours but the server and its firewall: no tunnel, no volume, and no call to
    // the provider that mentions an agent.
    assert_eq!(
        rig.cloudflare.control().calls_total(),
        0,
        "a Plain VM has no tunnel"
    );
    let answers = rig.hetzner.control().answers();
    assert!(!answers.is_empty());
    for answer in answers {
        assert!(
            !answer.template.starts_with("/v1/volumes"),
            "{}",
            answer.path
        );
        let body = String::from_utf8_lossy(&answer.body).to_ascii_lowercase();
        assert!(
            !body.contains("vm-agent") && !body.contains("cloudflared"),
            "{} {}: {body}",
            answer.method,
            answer.path
        );
    }

    // Usage: existence, stopped hours included, split at the transfer, kept after destroy.
    control::ledger::rollup(&h.app.store, h.now())
        .await
        .unwrap();
    let day = &started.to_string()[..10];
    let usage = h
        .get(&format!("/api/usage?from={day}&to={day}"), &h.operator)
        .await;
    assert_eq!(usage.status, 200, "{:#}", usage.body);
    let rows: Vec<&Value> = usage.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resource_id"] == id)
        .collect();
    let billed = |account: &str| -> i64 {
        rows.iter()
            .filter(|r| r["account_id"] == account)
            .map(|r| {
                assert_eq!(r["resource_kind"], "plain_vm");
                assert_eq!(r["paused_s"], 0, "stopped time bills like running time");
                r["running_s"].as_i64().unwrap()
            })
            .sum()
    };
    let provisioned = view["provisioned_at"].as_str().unwrap();
    let destroyed = view["destroyed_at"].as_str().unwrap();
    let lifetime = control_api::Timestamp::parse(destroyed)
        .unwrap()
        .as_millis()
        / 1000
        - control_api::Timestamp::parse(provisioned)
            .unwrap()
            .as_millis()
            / 1000;
    assert_eq!(billed(&rig.account) + billed(&other), lifetime, "{rows:#?}");
    assert!(
        billed(&rig.account) >= 2 * 3_600,
        "the stopped hour is billed"
    );
    assert!(billed(&other) >= 3_600);
}

#[tokio::test]
async fn the_firewall_is_read_live_and_replaced_whole_and_bad_rulesets_change_nothing() {
    let rig = rig(TestDb::sqlite()).await;
    let h = &rig.h;
    let (id, _) = rig.running_vm("web").await;
    let path = format!("/api/plain-vms/{id}/firewall");

    let read = h.get(&path, &rig.token).await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.body["rules"][0]["port"], "22");

    let wanted = json!({"rules": [
        {"direction": "in", "protocol": "tcp", "port": "443", "source_ips": ["0.0.0.0/0", "::/0"], "description": "https"},
        {"direction": "in", "protocol": "udp", "port": "51820", "source_ips": ["203.0.113.0/24"]},
        {"direction": "in", "protocol": "icmp", "source_ips": ["::/0"]},
    ]});
    let put = h
        .call(Method::PUT, &path, Some(&rig.token), Some(wanted.clone()))
        .await;
    assert_eq!(put.status, 200, "{:#}", put.body);
    assert_eq!(put.body["rules"].as_array().unwrap().len(), 3);
    assert_eq!(put.body["rules"][0]["port"], "443");
    let live = rig.hetzner.control().firewalls()[0].rules.clone();
    assert_eq!(live.len(), 3, "applied at the provider: {live:#?}");
    assert_eq!(
        h.get(&path, &rig.token).await.body,
        put.body,
        "read back live"
    );

    // Another account sees nothing.
    let (_, stranger) = h.account("Globex").await;
    h.get(&path, &stranger).await.problem(404, None);

    // Bad rulesets: refused naming the field, nothing sent to the provider.
    let ssh = || {
        json!({"direction": "in", "protocol": "tcp", "port": "22",
               "source_ips": ["0.0.0.0/0", "::/0"], "description": "ssh"})
    };
    let with = |key: &str, value: Value| {
        let mut rule = ssh();
        rule[key] = value;
        rule
    };
    let many_networks: Vec<String> = (0..=100).map(|n| format!("10.0.{n}.0/24")).collect();
    let too_many: Vec<Value> = (0..=50).map(|_| ssh()).collect();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([with("direction", json!("out"))]),
            "rules[0].direction",
            "no egress policy at v1",
        ),
        (
            json!([with("direction", json!("inbound"))]),
            "rules[0].direction",
            "not a direction",
        ),
        (
            json!([with("direction", json!(""))]),
            "rules[0].direction",
            "not a direction",
        ),
        (
            json!([with("destination_ips", json!(["0.0.0.0/0"]))]),
            "rules[0].destination_ips",
            "no egress policy",
        ),
        (
            json!([with("protocol", json!("http"))]),
            "rules[0].protocol",
            "not one of",
        ),
        (
            json!([with("protocol", json!("TCP"))]),
            "rules[0].protocol",
            "not one of",
        ),
        (
            json!([with("protocol", json!(""))]),
            "rules[0].protocol",
            "not one of",
        ),
        (
            json!([with("port", Value::Null)]),
            "rules[0].port",
            "is required for tcp and udp",
        ),
        (
            json!([with("port", json!("0"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("65536"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("-1"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("22-"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("a-b"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("100-10"))]),
            "rules[0].port",
            "runs backwards",
        ),
        (
            json!([with("port", json!("22,80"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!(" 22"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([with("port", json!("+22"))]),
            "rules[0].port",
            "not a port",
        ),
        (
            json!([{"direction": "in", "protocol": "icmp", "port": "22", "source_ips": ["0.0.0.0/0"]}]),
            "rules[0].port",
            "tcp and udp only",
        ),
        (
            json!([{"direction": "in", "protocol": "gre", "port": "1-2", "source_ips": ["::/0"]}]),
            "rules[0].port",
            "tcp and udp only",
        ),
        (
            json!([with("source_ips", json!([]))]),
            "rules[0].source_ips",
            "is empty",
        ),
        (
            json!([with("source_ips", json!(many_networks))]),
            "rules[0].source_ips",
            "Hetzner allows 100",
        ),
        (
            json!([with("source_ips", json!(["0.0.0.0"]))]),
            "rules[0].source_ips[0]",
            "CIDR notation",
        ),
        (
            json!([with("source_ips", json!(["10.0.0.1/24"]))]),
            "rules[0].source_ips[0]",
            "host bits",
        ),
        (
            json!([with("source_ips", json!(["10.0.0.0/33"]))]),
            "rules[0].source_ips[0]",
            "prefix length",
        ),
        (
            json!([with("source_ips", json!(["2001:db8::1/64"]))]),
            "rules[0].source_ips[0]",
            "host bits",
        ),
        (
            json!([with("source_ips", json!(["2001:db8::/129"]))]),
            "rules[0].source_ips[0]",
            "prefix length",
        ),
        (
            json!([with("source_ips", json!(["300.0.0.0/8"]))]),
            "rules[0].source_ips[0]",
            "not an IP address",
        ),
        (
            json!([with("source_ips", json!(["example.com/32"]))]),
            "rules[0].source_ips[0]",
            "not an IP address",
        ),
        (
            json!([with("source_ips", json!(["10.0.0.0/+8"]))]),
            "rules[0].source_ips[0]",
            "prefix length",
        ),
        (
            json!([with("source_ips", json!(["10.0.0.0/08"]))]),
            "rules[0].source_ips[0]",
            "prefix length",
        ),
        (
            json!([with("source_ips", json!(["1.2.3.4/0"]))]),
            "rules[0].source_ips[0]",
            "host bits",
        ),
        (
            json!([with("source_ips", json!(["::/0", "fe80::1%eth0/64"]))]),
            "rules[0].source_ips[1]",
            "not an IP address",
        ),
        (
            json!([with("description", json!("x".repeat(256)))]),
            "rules[0].description",
            "longer than 255",
        ),
        (
            json!([with("description", json!("ssh\nfrom anywhere"))]),
            "rules[0].description",
            "control characters",
        ),
        (json!(too_many), "rules", "Hetzner allows 50"),
        (
            json!([ssh(), with("port", json!("99999"))]),
            "rules[1].port",
            "not a port",
        ),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let before = rig.hetzner.control().firewalls()[0].rules.clone();
    let actions = rig.hetzner.control().actions().len();
    for (rules, field, reason) in &cases {
        let reply = h
            .call(
                Method::PUT,
                &path,
                Some(&rig.token),
                Some(json!({"rules": rules})),
            )
            .await;
        let problem = reply.problem(422, None);
        let errors = problem["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == *field && e["message"].as_str().unwrap().contains(reason)),
            "{rules}: wanted {field} ({reason}), got {problem:#}"
        );
    }
    // Bodies that are not a ruleset at all.
    for (body, status) in [
        (json!({"rules": "tcp/22"}), 422),
        (json!({}), 422),
        (json!({"rules": [], "history": true}), 422),
        (
            json!({"rules": [{"direction": "in", "protocol": "tcp", "port": 22, "source_ips": ["::/0"]}]}),
            422,
        ),
        (
            json!({"rules": [{"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["::/0"], "dest_port": "1"}]}),
            422,
        ),
    ] {
        let reply = h
            .call(Method::PUT, &path, Some(&rig.token), Some(body.clone()))
            .await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:#}", reply.body);
    }
    let after = rig.hetzner.control().firewalls()[0].rules.clone();
    assert_eq!(after, before, "a rejected ruleset changed the provider's");
    assert_eq!(
        rig.hetzner.control().actions().len(),
        actions,
        "a rejected ruleset reached the provider"
    );

    // An empty ruleset lets nothing in.
    let closed = h
        .call(
            Method::PUT,
            &path,
            Some(&rig.token),
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(closed.status, 200, "{:#}", closed.body);
    assert_eq!(closed.body["rules"], json!([]));
    assert!(rig.hetzner.control().firewalls()[0].rules.is_empty());
}

#[tokio::test]
async fn bad_provisioning_requests_are_refused_naming_the_field_and_make_nothing() {
    let rig = rig(TestDb::sqlite()).await;
    let h = &rig.h;
    let (_, other_token) = h.account("Globex").await;
    let foreign = h
        .post(
            "/api/vault/keys",
            &other_token,
            json!({"name": "bob", "public_key": key_line(9, "bob")}),
        )
        .await;
    let foreign = foreign.body["id"].as_str().unwrap().to_owned();
    let key = rig.key_id.clone();
    let unknown = "key_01JDQ6V9000000000000000000";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "Web", "vault_key_ids": [key]}), "name"),
        (json!({"name": "", "vault_key_ids": [key]}), "name"),
        (
            json!({"name": "web", "hostname": "web_1", "vault_key_ids": [key]}),
            "hostname",
        ),
        (
            json!({"name": "web", "hostname": "-web", "vault_key_ids": [key]}),
            "hostname",
        ),
        (
            json!({"name": "web", "hostname": "a..b", "vault_key_ids": [key]}),
            "hostname",
        ),
        (
            json!({"name": "web", "hostname": "10.0.0.1", "vault_key_ids": [key]}),
            "hostname",
        ),
        (
            json!({"name": "web", "hostname": "x".repeat(64), "vault_key_ids": [key]}),
            "hostname",
        ),
        (json!({"name": "web"}), "vault_key_ids"),
        (
            json!({"name": "web", "vault_key_ids": ["nope"]}),
            "vault_key_ids[0]",
        ),
        (
            json!({"name": "web", "vault_key_ids": [unknown]}),
            "vault_key_ids[0]",
        ),
        (
            json!({"name": "web", "vault_key_ids": [foreign]}),
            "vault_key_ids[0]",
        ),
        (
            json!({"name": "web", "vault_key_ids": [key, key]}),
            "vault_key_ids[1]",
        ),
        (
            json!({"name": "web", "vault_key_ids": [key], "server_type": "CX22"}),
            "server_type",
        ),
        (
            json!({"name": "web", "vault_key_ids": [key], "location": "fsn1 "}),
            "location",
        ),
        (
            json!({"name": "web", "vault_key_ids": [key], "image": "../debian"}),
            "image",
        ),
        (
            json!({"name": "web", "vault_key_ids": [key], "account_id": rig.account}),
            "account_id",
        ),
    ];
    let before = h.snapshot().await;
    for (body, field) in &cases {
        let reply = h.post("/api/plain-vms", &rig.token, body.clone()).await;
        reply.problem(422, Some(field));
    }
    // Unknown fields and wrong types are refused too.
    for body in [
        json!({"name": "web", "vault_key_ids": [key], "packages": ["curl"]}),
        json!({"name": "web", "vault_key_ids": [key], "runcmd": ["id"]}),
        json!({"name": "web", "vault_key_ids": key, "one_time_password": true}),
        json!({"name": "web", "one_time_password": "yes"}),
    ] {
        let reply = h.post("/api/plain-vms", &rig.token, body.clone()).await;
        assert_eq!(reply.status, 422, "{body}: {:#}", reply.body);
    }
    assert_eq!(
        h.snapshot().await,
        before,
        "a refused request changed the database"
    );
    h.run_jobs().await;
    assert!(rig.hetzner.control().servers().is_empty());
    assert!(rig.hetzner.control().firewalls().is_empty());
}

/// The hash of the password shown lives only in the memory of the replica that answered: a
/// job that finds it gone (that replica restarted before making the server) makes no server
/// with another, releases the firewall it made and ends the VM, saying why.
#[tokio::test]
async fn a_password_lost_with_its_replica_makes_no_server() {
    let rig = rig(TestDb::sqlite()).await;
    let h = &rig.h;
    let made = h
        .post(
            "/api/plain-vms",
            &rig.token,
            json!({"name": "web", "one_time_password": true}),
        )
        .await;
    assert_eq!(made.status, 202, "{:#}", made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    h.app.passwords.forget(&id);
    let view = rig.settle(&id, "destroyed").await;
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("one-time password"), "{error}");
    assert!(rig.hetzner.control().servers().is_empty());
    assert!(rig.hetzner.control().firewalls().is_empty());
}

/// Servers and firewalls in the Hetzner fake.
fn inventory(rig: &Rig) -> (usize, usize) {
    let control = rig.hetzner.control();
    (control.servers().len(), control.firewalls().len())
}

/// Each step of every Plain VM job run twice in a row (as if control had died before
/// recording it): the second run changes nothing, and each stage ends with exactly one server
/// and one firewall, wired together, then none.
#[tokio::test]
async fn every_step_run_twice_makes_nothing_more() {
    let settings = Settings {
        replay_steps: true,
        ..Settings::default()
    };
    let rig = rig_with(TestDb::sqlite(), settings).await;
    let (id, _) = rig.running_vm("web").await;
    assert_eq!(inventory(&rig), (1, 1));
    let server = &rig.hetzner.control().servers()[0];
    assert_eq!(
        server.firewalls,
        vec![rig.hetzner.control().firewalls()[0].id]
    );
    for (action, state) in [("stop", "stopped"), ("start", "running")] {
        let reply = rig.act(Method::POST, &id, action, &rig.token).await;
        assert_eq!(reply.status, 202, "{action}: {:#}", reply.body);
        let view = rig.settle(&id, state).await;
        assert_eq!(view["last_error"], Value::Null, "{action}: {view:#}");
        assert_eq!(inventory(&rig), (1, 1), "{action}");
    }
    let reply = rig.act(Method::DELETE, &id, "", &rig.token).await;
    assert_eq!(reply.status, 202, "{:#}", reply.body);
    let view = rig.settle(&id, "destroyed").await;
    assert_eq!(view["last_error"], Value::Null, "{view:#}");
    assert_eq!(inventory(&rig), (0, 0));
}

/// The provisioning calls that make something (or read the server's state).
const PROVISION_CALLS: &[(&str, &str)] = &[
    ("POST", "/v1/firewalls"),
    ("POST", "/v1/servers"),
    ("GET", "/v1/servers/{id}"),
];

/// A transient failure at each provisioning call in turn is retried until the VM runs with
/// exactly one server and one firewall; a permanent one releases what was made and ends the
/// VM with the provider's words, leaving nothing.
#[tokio::test]
async fn a_failure_at_each_provisioning_call_converges_or_leaves_nothing() {
    for &(method, route) in PROVISION_CALLS {
        for permanent in [false, true] {
            let rig = rig(TestDb::sqlite()).await;
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, code) = if permanent {
                (422, "invalid_input")
            } else {
                (503, "unavailable")
            };
            rig.hetzner
                .control()
                .fail_next(&method, route, 1, status, code);
            let made = rig
                .h
                .post(
                    "/api/plain-vms",
                    &rig.token,
                    json!({"name": "web", "vault_key_ids": [rig.key_id]}),
                )
                .await;
            assert_eq!(made.status, 202, "{:#}", made.body);
            let id = made.body["id"].as_str().unwrap();
            let what = format!("{method} {route} failing (permanent: {permanent})");
            if permanent {
                let view = rig.settle(id, "destroyed").await;
                let error = view["last_error"].as_str().unwrap_or_default();
                assert!(error.contains("released"), "{what}: {view:#}");
                assert_eq!(inventory(&rig), (0, 0), "{what}");
            } else {
                let view = rig.settle(id, "running").await;
                assert_eq!(view["last_error"], Value::Null, "{what}: {view:#}");
                assert_eq!(inventory(&rig), (1, 1), "{what}");
            }
        }
    }
}

/// A Plain VM shut down from inside its OS (behind control's back) is recorded stopped by the
/// reconciler, so it can be started again; one powered on again is recorded running.
#[tokio::test]
async fn the_reconciler_records_a_plain_vm_switched_off_behind_controls_back() {
    let rig = rig(TestDb::sqlite()).await;
    let h = &rig.h;
    let (id, _) = rig.running_vm("web").await;
    let every = Duration::from_mins(1);
    let server = rig.view(&id).await;
    assert_eq!(server["state"], "running");
    let server_id = rig.hetzner.control().servers()[0].id.to_string();
    let servers = &h.app.providers.default_cloud().servers;
    servers.power_off(&server_id).await.unwrap();
    for _ in 0..100 {
        if rig.hetzner.control().servers()[0].status == "off" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.advance(60_000);
    assert_eq!(
        control::background::reconcile(&h.app, every).await.unwrap(),
        1
    );
    assert_eq!(rig.view(&id).await["state"], "stopped");
    let start = rig.act(Method::POST, &id, "start", &rig.token).await;
    assert_eq!(start.status, 202, "{:#}", start.body);
    rig.settle(&id, "running").await;
    h.advance(60_000);
    assert_eq!(
        control::background::reconcile(&h.app, every).await.unwrap(),
        0,
        "nothing left to correct"
    );
}
