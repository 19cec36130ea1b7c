//! Signed checkpoints: the chain's head anchored outside the database.
//!
//! Whoever holds the database file can cut events off the end of the chain and rewind its head
//! (dropping the triggers first), and the chain still verifies: nothing in the database remembers
//! how long it was. So control periodically signs the head with an ed25519 key of its own,
//! after checking that the events since the previous checkpoint link up, and publishes the
//! result at INFO in its log and at `GET /api/audit/checkpoints`. A checkpoint kept anywhere
//! else (a log archive, a ticket, an auditor's mailbox) is then the proof: `control audit verify
//! --checkpoint FILE` fails, naming the first missing event, when the chain no longer holds the
//! events it signed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use control_api::Timestamp;
use control_api::audit::AuditCheckpoint;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use tracing::info;

use super::{GENESIS_HASH, walk};
use crate::store::{CheckpointRow, Result, Store, StoreError};

/// The file name of the signing key in the data dir, unless configured.
pub const KEY_FILE: &str = "audit-signing.key";

/// The bytes a checkpoint's signature covers.
pub fn message(seq: i64, hash: &str, at: Timestamp) -> String {
    format!(
        "control audit checkpoint v1\n{seq}\n{hash}\n{}\n",
        at.as_millis()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the audit signing key {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write a new audit signing key to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit signing key {} is not 64 hex digits (an ed25519 seed)", path.display())]
    Malformed { path: PathBuf },
    #[error("no randomness for a new audit signing key: {0}")]
    Random(String),
}

/// The key checkpoints are signed with.
pub struct Signer {
    key: Ed25519KeyPair,
    public_key: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The key in `path` (the hex of a 32-byte ed25519 seed, one line), made there with mode
    /// 0600 if there is no such file yet. Replicas that share a database should share the key
    /// file, so that every checkpoint carries the same public key.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
            Err(source) => {
                return Err(KeyError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let seed = hex::decode(text.trim()).map_err(|_| malformed())?;
        let key = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| malformed())?;
        let public_key = hex::encode(key.public_key().as_ref());
        Ok(Self { key, public_key })
    }

    /// Hex, 32 bytes.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The checkpoint of event `seq` (whose hash is `hash`) at `at`.
    pub fn sign(&self, seq: i64, hash: &str, at: Timestamp) -> AuditCheckpoint {
        let signature = self.key.sign(message(seq, hash, at).as_bytes());
        AuditCheckpoint {
            seq,
            hash: hash.to_owned(),
            at,
            public_key: self.public_key.clone(),
            signature: hex::encode(signature.as_ref()),
        }
    }
}

/// A new key written to `path` (never over an existing file), returned as the file's text. It
/// is written whole beside `path` first and then linked into place, so replicas starting
/// together on one data dir all end up with the same key, never half of one.
fn create(path: &Path) -> Result<String, KeyError> {
    let mut seed = [0_u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let text = format!("{}\n", hex::encode(seed));
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    let partial = PathBuf::from(partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(write)?;
    file.write_all(text.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    let linked = std::fs::hard_link(&partial, path);
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => {
            info!(path = %path.display(), "made a new audit signing key (mode 0600); keep its public key with the checkpoints");
            Ok(text)
        }
        // Another replica made one first: that one is the key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        Err(source) => Err(write(source)),
    }
}

/// Whether `checkpoint` was signed by the key it names, and, when `trusted` is given, by that
/// key. `Err` says what does not hold.
pub fn check_signature(checkpoint: &AuditCheckpoint, trusted: Option<&str>) -> Result<(), String> {
    if let Some(trusted) = trusted
        && !trusted.trim().eq_ignore_ascii_case(&checkpoint.public_key)
    {
        return Err(format!(
            "it was signed by key {}, not by the trusted key {}",
            checkpoint.public_key,
            trusted.trim()
        ));
    }
    let public_key =
        hex::decode(&checkpoint.public_key).map_err(|_| "its public_key is not hex".to_owned())?;
    let signature =
        hex::decode(&checkpoint.signature).map_err(|_| "its signature is not hex".to_owned())?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(
            message(checkpoint.seq, &checkpoint.hash, checkpoint.at).as_bytes(),
            &signature,
        )
        .map_err(|_| {
            "its signature does not verify: it was not signed by that key, or was altered"
                .to_owned()
        })
}

/// Signs the chain's head if it has grown since the newest checkpoint, after checking that the
/// events since that checkpoint link up to it (a chain already damaged is reported, never
/// signed). Returns the new checkpoint, or `None` when there was nothing new to sign or another
/// replica signed the same head first.
pub async fn make(
    store: &Store,
    signer: &Signer,
    now: Timestamp,
) -> Result<Option<AuditCheckpoint>> {
    let (head_seq, head_hash, last) = {
        let mut tx = store.read().await?;
        let (head_seq, head_hash) = tx.audit_head().await?;
        let last = tx.audit_checkpoints(i64::MAX, 1).await?.pop();
        (head_seq, head_hash, last)
    };
    let from = match last {
        _ if head_seq == 0 => return Ok(None),
        Some(last) if last.seq > head_seq => {
            return Err(StoreError::AuditChain(format!(
                "not signing a checkpoint: the chain head records {head_seq} events, but the checkpoint of event {} was signed at {}: events were removed from the end",
                last.seq,
                Timestamp::from_millis(last.at)
            )));
        }
        Some(last) if last.seq == head_seq && last.hash != head_hash => {
            return Err(StoreError::AuditChain(format!(
                "not signing a checkpoint: event {head_seq} is not the one the checkpoint signed at {} (hash {head_hash}, signed {}): the chain was rewritten",
                Timestamp::from_millis(last.at),
                last.hash
            )));
        }
        Some(last) if last.seq == head_seq => return Ok(None),
        Some(last) => (last.seq, last.hash),
        None => (0, GENESIS_HASH.to_owned()),
    };
    let walked = walk(store, from, head_seq, None).await?;
    if let Some(broken) = walked.broken {
        return Err(StoreError::AuditChain(format!(
            "not signing a checkpoint: event {}{}: {}",
            broken.seq,
            broken
                .event_id
                .map(|id| format!(" ({id})"))
                .unwrap_or_default(),
            broken.reason
        )));
    }
    if walked.last_hash != head_hash {
        return Err(StoreError::AuditChain(format!(
            "not signing a checkpoint: the chain head's hash {head_hash} is not the last event's ({})",
            walked.last_hash
        )));
    }
    let checkpoint = signer.sign(head_seq, &head_hash, now);
    let mut tx = store.write().await?;
    match tx
        .insert_audit_checkpoint(&CheckpointRow {
            seq: checkpoint.seq,
            hash: checkpoint.hash.clone(),
            at: checkpoint.at.as_millis(),
            public_key: checkpoint.public_key.clone(),
            signature: checkpoint.signature.clone(),
        })
        .await
    {
        Ok(()) => tx.commit().await?,
        // Another replica signed this head first.
        Err(StoreError::Conflict(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    info!(
        seq = checkpoint.seq,
        hash = %checkpoint.hash,
        public_key = %checkpoint.public_key,
        checkpoint = %serde_json::to_string(&checkpoint).unwrap_or_default(),
        "audit checkpoint signed; keep it: `control audit verify --checkpoint FILE` proves the log still holds these events"
    );
    Ok(Some(checkpoint))
}

/// The wire form of a stored checkpoint.
pub fn to_api(row: CheckpointRow) -> AuditCheckpoint {
    AuditCheckpoint {
        seq: row.seq,
        hash: row.hash,
        at: Timestamp::from_millis(row.at),
        public_key: row.public_key,
        signature: row.signature,
    }
}

/// Largest page of checkpoints one listing returns.
pub const MAX_PAGE: i64 = 500;

/// A page of checkpoints, newest first, below the cursor (a seq this listing returned).
pub async fn list(
    store: &Store,
    cursor: Option<&str>,
    limit: i64,
) -> crate::error::Result<control_api::audit::AuditCheckpointPage> {
    let before_seq = match cursor {
        None => i64::MAX,
        Some(text) => Some(text)
            .filter(|t| (1..=18).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| {
                crate::error::Error::invalid("cursor", "is not a cursor this API returned")
            })?,
    };
    let rows = store
        .read()
        .await?
        .audit_checkpoints(before_seq, limit + 1)
        .await?;
    let (rows, next_cursor) = crate::paging::one_page(rows, limit, |c| c.seq.to_string());
    Ok(control_api::audit::AuditCheckpointPage {
        items: rows.into_iter().map(to_api).collect(),
        next_cursor,
    })
}
