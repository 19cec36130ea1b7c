//! Vault keys over the API: keys of every kind the platform takes, made by `ssh-keygen` and
//! fingerprinted as `ssh-keygen -lf` prints them; bad keys refused with the reason and nothing
//! changed; one fingerprint once per account; accounts see and delete only their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use ssh_key::public::{DsaPublicKey, Ed25519PublicKey, KeyData, SkEd25519};
use ssh_key::{Mpint, PublicKey};
use test_support::{TestDb, have_program};

/// A key pair made by `ssh-keygen`: the `.pub` line and the private key file's text.
fn keygen(
    dir: &Path,
    name: &str,
    kind: &str,
    bits: Option<u32>,
    comment: &str,
) -> (String, String) {
    let path = dir.join(name);
    let mut command = Command::new("ssh-keygen");
    command
        .args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
        .arg(&path);
    if let Some(bits) = bits {
        command.args(["-b", &bits.to_string()]);
    }
    let made = command.output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (
        public.trim().to_owned(),
        std::fs::read_to_string(&path).unwrap(),
    )
}

/// What `ssh-keygen -lf` prints of a public key line: bits and fingerprint.
fn ssh_keygen_fingerprint(dir: &Path, line: &str) -> (u32, String) {
    let path = dir.join("printed.pub");
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let printed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let text = String::from_utf8(printed.stdout).unwrap();
    let mut fields = text.split_whitespace();
    let bits = fields.next().unwrap().parse().unwrap();
    (bits, fields.next().unwrap().to_owned())
}

async fn add(h: &common::Harness, token: &str, name: &str, key: &str) -> common::Reply {
    h.post(
        "/api/vault/keys",
        token,
        json!({"name": name, "public_key": key}),
    )
    .await
}

async fn keys(h: &common::Harness, token: &str) -> Vec<Value> {
    let listed = h.get("/api/vault/keys", token).await;
    assert_eq!(listed.status, 200, "{:#}", listed.body);
    listed.body["keys"].as_array().unwrap().clone()
}

/// A FIDO key (`sk-ssh-ed25519@openssh.com`), which needs a security key to make: built from
/// its parts, then read by `ssh-keygen` like any other.
fn fido_key() -> String {
    let key = SkEd25519::new(Ed25519PublicKey([7; 32]), "ssh:".to_owned());
    PublicKey::new(KeyData::SkEd25519(key), "bob@yubikey")
        .to_openssh()
        .unwrap()
}

/// A DSA key (`ssh-dss`), which recent ssh-keygen no longer makes.
fn dsa_key() -> String {
    let number = |b: u8| Mpint::from_positive_bytes(&[b; 128]).unwrap();
    let key = DsaPublicKey {
        p: number(0x5a),
        q: Mpint::from_positive_bytes(&[0x33; 20]).unwrap(),
        g: number(0x21),
        y: number(0x42),
    };
    PublicKey::new(KeyData::Dsa(key), "old@box")
        .to_openssh()
        .unwrap()
}

#[tokio::test]
async fn keys_of_every_kind_taken_show_ssh_keygens_fingerprint() {
    if !have_program("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = common::Harness::new(TestDb::sqlite()).await;
    let (account, token) = h.account("Acme").await;
    let mut made = Vec::new();
    for (kind, bits, algorithm) in [
        ("ed25519", None, "ssh-ed25519"),
        ("ecdsa", Some(256), "ecdsa-sha2-nistp256"),
        ("ecdsa", Some(384), "ecdsa-sha2-nistp384"),
        ("ecdsa", Some(521), "ecdsa-sha2-nistp521"),
        ("rsa", Some(2048), "ssh-rsa"),
        ("rsa", Some(3072), "ssh-rsa"),
    ] {
        let name = format!("{kind}-{}", bits.unwrap_or(0));
        let (line, _) = keygen(dir.path(), &name, kind, bits, "alice@laptop");
        made.push((line, algorithm));
    }
    made.push((fido_key(), "sk-ssh-ed25519@openssh.com"));
    for (n, (line, algorithm)) in made.iter().enumerate() {
        let added = add(&h, &token, &format!("key {n}"), &format!("  {line}\n")).await;
        assert_eq!(added.status, 201, "{line}: {:#}", added.body);
        let (bits, fingerprint) = ssh_keygen_fingerprint(dir.path(), line);
        let key = &added.body;
        assert_eq!(key["fingerprint"], fingerprint.as_str(), "{line}");
        assert_eq!(key["bits"], bits, "{line}");
        assert_eq!(key["algorithm"], *algorithm);
        assert_eq!(key["public_key"], line.as_str(), "kept as given, trimmed");
        assert_eq!(key["account_id"], account.as_str());
        assert!(key["id"].as_str().unwrap().starts_with("key_"));
    }
    assert_eq!(keys(&h, &token).await.len(), made.len());

    // Options are refused; a key without a comment has none.
    let (bare, _) = keygen(dir.path(), "bare", "ed25519", None, "");
    let added = add(&h, &token, "bare", &bare).await;
    assert_eq!(added.status, 201, "{:#}", added.body);
    assert_eq!(added.body["comment"], Value::Null);
}

#[tokio::test]
async fn bad_keys_are_refused_with_the_reason_and_nothing_changes() {
    if !have_program("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = common::Harness::new(TestDb::sqlite()).await;
    let (_, token) = h.account("Acme").await;
    let (good, private) = keygen(dir.path(), "good", "ed25519", None, "alice@laptop");
    let (short_rsa, _) = keygen(dir.path(), "short", "rsa", Some(1024), "old");
    let (rsa, _) = keygen(dir.path(), "rsa", "rsa", Some(2048), "x");
    let good_blob = good.split_whitespace().nth(1).unwrap().to_owned();
    let rsa_blob = rsa.split_whitespace().nth(1).unwrap().to_owned();
    let mut truncated = good_blob.clone();
    truncated.truncate(good_blob.len() / 2);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "is required"),
        ("   \n ".to_owned(), "is required"),
        ("hello".to_owned(), "not an OpenSSH public key"),
        ("ssh-ed25519".to_owned(), "not an OpenSSH public key"),
        (
            "ssh-ed25519 !!!not-base64!!! x".to_owned(),
            "not an OpenSSH public key",
        ),
        (
            format!("ssh-ed25519 {truncated} x"),
            "not an OpenSSH public key",
        ),
        (
            format!("ssh-rsa {good_blob} mismatched"),
            "not an OpenSSH public key",
        ),
        (
            format!("ssh-ed25519 {rsa_blob} mismatched"),
            "not an OpenSSH public key",
        ),
        (format!("ssh-foo {good_blob}"), "not an OpenSSH public key"),
        (short_rsa, "RSA key of 1024 bits"),
        (dsa_key(), "DSA"),
        (private.clone(), "private key"),
        (format!("{good}\n{rsa}"), "more than one line"),
        (format!("from=\"10.0.0.1\" {good}"), "options"),
        (format!("command=\"/bin/true\",no-pty {good}"), "options"),
        (
            format!("ssh-ed25519-cert-v01@openssh.com {good_blob} cert"),
            "certificate",
        ),
        (format!("{good} {}", "a".repeat(20_000)), "longer than"),
        (format!("{good} bell\u{7}"), "control characters"),
        (
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
                STANDARD.encode([1_u8; 44])
            ),
            "more than one line",
        ),
        (
            format!("---- BEGIN SSH2 PUBLIC KEY ----\n{good_blob}\n---- END SSH2 PUBLIC KEY ----"),
            "more than one line",
        ),
    ];
    assert!(cases.len() >= 15);
    let before = h.snapshot().await;
    for (key, reason) in &cases {
        let refused = add(&h, &token, "bad", key).await;
        let problem = refused.problem(422, Some("public_key"));
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{key:?}: {detail}");
        assert!(
            !detail.contains("PRIVATE"),
            "the private key is not echoed: {detail}"
        );
    }
    // A name the API does not take is named too.
    let refused = add(&h, &token, "", &good).await;
    refused.problem(422, Some("name"));
    assert_eq!(h.snapshot().await, before, "nothing recorded");
    assert!(keys(&h, &token).await.is_empty());
}

#[tokio::test]
async fn a_key_is_once_per_account_and_accounts_see_and_delete_only_their_own() {
    once_per_account_and_scoped(TestDb::sqlite()).await;
}

#[tokio::test]
async fn a_key_is_once_per_account_and_accounts_see_and_delete_only_their_own_on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        once_per_account_and_scoped(db).await;
    }
}

async fn once_per_account_and_scoped(db: TestDb) {
    if !have_program("ssh-keygen") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = common::Harness::new(db).await;
    let (acme, acme_token) = h.account("Acme").await;
    let (_, other_token) = h.account("Other").await;
    let (line, _) = keygen(dir.path(), "k", "ed25519", None, "alice@laptop");
    let added = add(&h, &acme_token, "laptop", &line).await;
    assert_eq!(added.status, 201, "{:#}", added.body);
    let id = added.body["id"].as_str().unwrap().to_owned();

    // The same key again, even with another comment: 409 naming the key it is.
    let blob: Vec<&str> = line.split_whitespace().take(2).collect();
    let again = add(
        &h,
        &acme_token,
        "again",
        &format!("{} another", blob.join(" ")),
    )
    .await;
    let problem = again.problem(409, None);
    assert!(
        problem["detail"].as_str().unwrap().contains(&id),
        "{problem:#}"
    );
    // Another account may hold the same key.
    assert_eq!(add(&h, &other_token, "mine too", &line).await.status, 201);

    // Each account sees its own; an operator names the account, or sees them all.
    assert_eq!(keys(&h, &acme_token).await.len(), 1);
    assert_eq!(keys(&h, &other_token).await.len(), 1);
    let operator = h.operator.clone();
    assert_eq!(keys(&h, &operator).await.len(), 2);
    let acme_only = h
        .get(&format!("/api/vault/keys?account_id={acme}"), &operator)
        .await;
    assert_eq!(acme_only.body["keys"].as_array().unwrap().len(), 1);
    let unnamed = add(&h, &operator, "op", &line).await;
    unnamed.problem(422, Some("account_id"));

    // Another account cannot delete it; its own deletes it, once.
    let path = format!("/api/vault/keys/{id}");
    let theirs = h.delete(&path, &other_token).await;
    theirs.problem(404, None);
    let deleted = h.delete(&path, &acme_token).await;
    assert_eq!(deleted.status, 200, "{:#}", deleted.body);
    assert_eq!(deleted.body["id"], id.as_str());
    assert!(keys(&h, &acme_token).await.is_empty());
    let twice = h.delete(&path, &acme_token).await;
    twice.problem(404, None);
    let nonsense = h.delete("/api/vault/keys/x%27%3B%20--", &acme_token).await;
    assert_eq!(nonsense.status, 404);
    // Deleted, it may be added again.
    assert_eq!(add(&h, &acme_token, "laptop", &line).await.status, 201);
}
