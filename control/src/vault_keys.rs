//! Vault keys: an account's OpenSSH public keys, which Plain VMs receive at provisioning.
//!
//! A key is parsed with a real parser (the `ssh-key` crate) from one `.pub` line: Ed25519,
//! ECDSA (P-256, P-384, P-521), RSA of at least 2048 bits and FIDO security keys (`sk-`) are
//! taken; DSA, short RSA, certificates, private keys and `authorized_keys` options are refused
//! with the reason. It is kept as VMs will receive it (algorithm, base64, comment) with its
//! SHA256 fingerprint, exactly as `ssh-keygen -lf` prints it; one fingerprint once per account.
//! Deleting a key removes it from the account only: VMs that received it keep it.
//!
//! Not audited (DESIGN.md: the audit log holds lifecycle events of Agents and Plain VMs).

use std::str::FromStr;

use control_api::Timestamp;
use control_api::vault::{AddVaultKey, VaultKey, VaultKeyList};
use ssh_key::authorized_keys::Entry;
use ssh_key::{EcdsaCurve, HashAlg, public::KeyData};
use tracing::info;

use crate::app::{App, Caller};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::store::VaultKeyRow;
use crate::validate::Checks;

/// The longest key line taken (an RSA key of 16384 bits is about 2.8 KB).
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// The most keys an account's Vault holds.
pub const MAX_KEYS: i64 = 100;
/// The shortest RSA modulus taken, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// A public key as it was read: what is stored and shown of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    pub algorithm: String,
    pub bits: u32,
    pub fingerprint: String,
    /// Algorithm, base64 and comment, one line.
    pub public_key: String,
    pub comment: Option<String>,
}

/// Reads one OpenSSH public key line, or says why it is not one this platform takes.
pub fn parse(text: &str) -> std::result::Result<ParsedKey, String> {
    let line = text.trim();
    if line.is_empty() {
        return Err("is required: one OpenSSH public key line, as in a .pub file".to_owned());
    }
    if line.len() > MAX_KEY_LEN {
        return Err(format!("is longer than {MAX_KEY_LEN} bytes"));
    }
    if line.contains("PRIVATE KEY") {
        return Err(
            "is a private key: give the public key (the .pub file), and keep the private key to yourself"
                .to_owned(),
        );
    }
    if line.lines().count() > 1 {
        return Err("holds more than one line: add one key per request".to_owned());
    }
    if line.contains("-cert-v01@openssh.com") {
        return Err("is an OpenSSH certificate: give the plain public key".to_owned());
    }
    let entry = Entry::from_str(line).map_err(|e| {
        format!("is not an OpenSSH public key (expected e.g. \"ssh-ed25519 AAAA… comment\"): {e}")
    })?;
    if entry.config_opts().iter().next().is_some() {
        return Err(
            "carries authorized_keys options (command=, from=, …), which are not kept: give the key alone"
                .to_owned(),
        );
    }
    let key = entry.public_key();
    let bits = bits(key.key_data())?;
    let comment = Some(key.comment().trim())
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    if let Some(comment) = &comment
        && (comment.chars().any(char::is_control) || comment.len() > 255)
    {
        return Err("has a comment with control characters or over 255 bytes".to_owned());
    }
    let algorithm = key.algorithm().as_str().to_owned();
    let base64 = key
        .to_openssh()
        .map_err(|e| format!("cannot be written back: {e}"))?;
    // `to_openssh` writes the comment too; keep algorithm and base64, then ours.
    let mut parts = base64.split_whitespace();
    let body = match (parts.next(), parts.next()) {
        (Some(kind), Some(data)) => format!("{kind} {data}"),
        _ => return Err("cannot be written back".to_owned()),
    };
    let public_key = match &comment {
        Some(comment) => format!("{body} {comment}"),
        None => body,
    };
    Ok(ParsedKey {
        algorithm,
        bits,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        public_key,
        comment,
    })
}

/// The key's size as `ssh-keygen -l` prints it, or why the key is refused.
fn bits(key: &KeyData) -> std::result::Result<u32, String> {
    match key {
        KeyData::Ed25519(_) | KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_) => Ok(256),
        KeyData::Ecdsa(ecdsa) => Ok(match ecdsa.curve() {
            EcdsaCurve::NistP256 => 256,
            EcdsaCurve::NistP384 => 384,
            EcdsaCurve::NistP521 => 521,
        }),
        KeyData::Rsa(rsa) => {
            let modulus = rsa.n.as_positive_bytes().unwrap_or_default();
            let bits = modulus.first().map_or(0, |top| {
                u32::try_from(modulus.len() * 8).unwrap_or(u32::MAX) - top.leading_zeros()
            });
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "is an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required (or use ed25519)"
                ));
            }
            Ok(bits)
        }
        KeyData::Dsa(_) => {
            Err("is a DSA key (ssh-dss), which OpenSSH no longer accepts: use ed25519".to_owned())
        }
        other => Err(format!(
            "is of a key type this platform does not take ({}): use ed25519, ecdsa, rsa (2048 bits or more) or a FIDO sk- key",
            other.algorithm()
        )),
    }
}

fn to_api(row: VaultKeyRow) -> VaultKey {
    VaultKey {
        id: row.id,
        account_id: row.account_id,
        name: row.name,
        algorithm: row.algorithm,
        bits: u32::try_from(row.bits).unwrap_or(0),
        fingerprint: row.fingerprint,
        public_key: row.public_key,
        comment: row.comment,
        created_at: Timestamp::from_millis(row.created_at),
    }
}

/// `POST /api/vault/keys`.
pub async fn add(
    app: &App,
    caller: &Caller,
    request: &AddVaultKey,
    idem: Option<&IdempotencyKey>,
) -> Result<VaultKey> {
    let mut checks = Checks::new();
    checks.display_text("name", &request.name, 100);
    let parsed = match parse(&request.public_key) {
        Ok(parsed) => Some(parsed),
        Err(reason) => {
            checks.fail("public_key", reason);
            None
        }
    };
    let account_id = caller
        .target_account(request.account_id.as_deref())
        .unwrap_or_else(|complaint| {
            checks.fail("account_id", complaint);
            ""
        });
    checks.finish()?;
    let Some(parsed) = parsed else {
        return Err(Error::invalid("public_key", "is not a key"));
    };
    if !crate::ids::looks_like(prefix::ACCOUNT, account_id) {
        return Err(Error::invalid(
            "account_id",
            format!("no account {}", account_id.escape_debug()),
        ));
    }
    let mut tx = app.store.write().await?;
    if tx.account(account_id).await?.is_none() {
        return Err(Error::invalid(
            "account_id",
            format!("no account {account_id}"),
        ));
    }
    if let Some(existing) = tx
        .vault_key_by_fingerprint(account_id, &parsed.fingerprint)
        .await?
    {
        return Err(Error::Conflict(format!(
            "this account's Vault holds this key already, as {} ({})",
            existing.id, existing.name
        )));
    }
    if tx.vault_key_count(account_id).await? >= MAX_KEYS {
        return Err(Error::Conflict(format!(
            "this account's Vault holds {MAX_KEYS} keys, the most it may: delete one first"
        )));
    }
    let row = VaultKeyRow {
        id: new_id(prefix::VAULT_KEY),
        account_id: account_id.to_owned(),
        name: request.name.clone(),
        algorithm: parsed.algorithm,
        bits: i64::from(parsed.bits),
        fingerprint: parsed.fingerprint,
        public_key: parsed.public_key,
        comment: parsed.comment,
        created_at: app.clock.now().as_millis(),
    };
    tx.insert_vault_key(&row).await?;
    let key = to_api(row);
    idempotency::record(&mut tx, idem, 201, &key).await?;
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        account_id = %key.account_id,
        vault_key_id = %key.id,
        fingerprint = %key.fingerprint,
        "vault key added"
    );
    Ok(key)
}

/// `GET /api/vault/keys`: the caller's account's keys (an operator's: every account's, or the
/// one named).
pub async fn list(app: &App, caller: &Caller, account: Option<&str>) -> Result<VaultKeyList> {
    let scope = match (caller.principal.account_scope(), account) {
        (Some(own), _) => Some(own),
        (None, named) => named,
    };
    let rows = app
        .store
        .read()
        .await?
        .vault_keys(scope, MAX_KEYS * 100)
        .await?;
    Ok(VaultKeyList {
        keys: rows.into_iter().map(to_api).collect(),
    })
}

/// `DELETE /api/vault/keys/{id}`: removes the key from the account only; VMs that received it
/// keep it.
pub async fn delete(
    app: &App,
    caller: &Caller,
    id: &str,
    idem: Option<&IdempotencyKey>,
) -> Result<VaultKey> {
    let not_found = || Error::not_found("vault key", id.escape_debug().to_string());
    if !crate::ids::looks_like(prefix::VAULT_KEY, id) {
        return Err(not_found());
    }
    let mut tx = app.store.write().await?;
    let row = tx
        .vault_key(id, caller.principal.account_scope())
        .await?
        .ok_or_else(not_found)?;
    tx.delete_vault_key(id).await?;
    let key = to_api(row);
    idempotency::record(&mut tx, idem, 200, &key).await?;
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        account_id = %key.account_id,
        vault_key_id = %key.id,
        fingerprint = %key.fingerprint,
        "vault key deleted from the account (VMs that received it keep it)"
    );
    Ok(key)
}
