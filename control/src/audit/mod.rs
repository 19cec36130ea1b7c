//! The audit log: append-only events chained by SHA-256.
//!
//! Each event's hash covers every stored field and the previous event's hash. Appends lock the
//! chain head row first, in the same transaction as the change they record, so concurrent
//! writers (tasks or replicas) line up behind each other and the chain never forks; the unique
//! constraints on `seq` and `prev_hash` would refuse a fork even if they did not. The database
//! itself refuses UPDATE and DELETE, accepts an event only at the end of the chain, and
//! advances the head itself, which otherwise only moves forward onto the newest event
//! (triggers, migration 0009). [`verify`] finds any edit, deletion or reordering that bypassed
//! them, an append refuses to go on when the head and the events disagree, and [`checkpoint`]
//! anchors the head outside the database, against a tail cut off with the head rewound.

use control_api::Timestamp;
use control_api::audit::{AuditAction, AuditCheckpoint, AuditEvent, AuditVerification, BrokenLink};
use control_api::usage::ResourceKind;
use sha2::{Digest, Sha256};

pub mod checkpoint;

use crate::ids::{new_id, prefix};
use crate::store::{AuditRow, DbText, Result, Store, StoreError, Tx};

/// The hash the first event links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How many events `verify` reads per query.
const VERIFY_BATCH: i64 = 1_000;

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub at: Timestamp,
    pub actor: String,
    pub action: AuditAction,
    pub resource_kind: ResourceKind,
    pub resource_id: &'a str,
    pub account_id: &'a str,
    pub to_account_id: Option<&'a str>,
    /// Ours (see `http::middleware::request_id`).
    pub request_id: Option<&'a str>,
    /// The caller's own `X-Request-Id`: stored in `details` as `caller_request_id`, so the
    /// chain's hashed fields keep their meaning (and earlier events their hashes).
    pub caller_request_id: Option<&'a str>,
    /// A JSON object.
    pub details: serde_json::Value,
}

impl<'a> NewEvent<'a> {
    /// What `caller` does at `at` to `resource`, owned by `account_id`: the actor and both
    /// request ids come from the caller; no destination account, empty details.
    pub fn by(
        caller: &'a crate::app::Caller,
        at: Timestamp,
        action: AuditAction,
        resource: crate::store::ResourceRef<'a>,
        account_id: &'a str,
    ) -> Self {
        Self {
            at,
            actor: caller.principal.actor(),
            action,
            resource_kind: resource.kind,
            resource_id: resource.id,
            account_id,
            to_account_id: None,
            request_id: Some(&caller.request_id),
            caller_request_id: caller.caller_request_id.as_deref(),
            details: serde_json::json!({}),
        }
    }
}

/// SHA-256 over the event's fields in a fixed order (a JSON array, so no field can bleed into
/// its neighbour), hex-encoded.
pub fn event_hash(row: &AuditRow) -> String {
    let canonical = serde_json::json!([
        row.seq,
        row.id,
        row.at,
        row.actor,
        row.action,
        row.resource_kind,
        row.resource_id,
        row.account_id,
        row.to_account_id,
        row.request_id,
        row.details,
        row.prev_hash,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Appends `event` to the chain inside `tx`; it becomes visible when `tx` commits.
pub async fn append(tx: &mut Tx, event: NewEvent<'_>) -> Result<AuditRow> {
    let mut details = event.details;
    if let Some(caller_request_id) = event.caller_request_id {
        match details.as_object_mut() {
            Some(fields) => {
                fields.insert("caller_request_id".to_owned(), caller_request_id.into());
            }
            None => {
                details = serde_json::json!({
                    "details": details,
                    "caller_request_id": caller_request_id,
                });
            }
        }
    }
    let (head_seq, head_hash) = tx.lock_audit_head().await?;
    head_agrees(tx, head_seq, &head_hash).await?;
    let mut row = AuditRow {
        seq: head_seq + 1,
        id: new_id(prefix::EVENT),
        at: event.at.as_millis(),
        actor: event.actor,
        action: event.action.as_db().to_owned(),
        resource_kind: event.resource_kind.as_db().to_owned(),
        resource_id: event.resource_id.to_owned(),
        account_id: event.account_id.to_owned(),
        to_account_id: event.to_account_id.map(str::to_owned),
        request_id: event.request_id.map(str::to_owned),
        details: details.to_string(),
        prev_hash: head_hash,
        hash: String::new(),
    };
    row.hash = event_hash(&row);
    // The database advances the head (a trigger), and refuses an event that does not extend it.
    tx.insert_audit(&row).await?;
    Ok(row)
}

/// Refuses to go on when the chain's head is not its newest event: an append after a rewound
/// head would collide with a stored event (and answer "conflict" forever), one after removed
/// events would hide the gap. Both are damage for an operator, not a caller, to act on.
pub async fn head_agrees(tx: &mut Tx, head_seq: i64, head_hash: &str) -> Result<()> {
    let newest = tx.newest_audit_event().await?;
    let (newest_seq, newest_hash) = newest.unwrap_or((0, GENESIS_HASH.to_owned()));
    if newest_seq == head_seq && newest_hash == head_hash {
        return Ok(());
    }
    Err(StoreError::AuditChain(if newest_seq == head_seq {
        format!(
            "the chain head's hash {head_hash} is not that of the newest event {newest_seq} ({newest_hash}); run `control audit verify`"
        )
    } else {
        format!(
            "the chain head records {head_seq} events but the newest stored event is {newest_seq}: {}; run `control audit verify`",
            if newest_seq > head_seq {
                "the head was rewound"
            } else {
                "events were removed from the end"
            }
        )
    }))
}

/// Whether the chain's head is its newest event, for readiness: `Err` names the damage.
pub async fn check_head(store: &Store) -> Result<()> {
    let mut tx = store.read().await?;
    let (head_seq, head_hash) = tx.audit_head().await?;
    head_agrees(&mut tx, head_seq, &head_hash).await
}

/// The wire form of a stored event.
pub fn to_api(row: AuditRow) -> Result<AuditEvent> {
    let details = serde_json::from_str(&row.details)
        .map_err(|e| StoreError::Corrupt(format!("audit event {} details: {e}", row.id)))?;
    Ok(AuditEvent {
        seq: row.seq,
        action: AuditAction::from_db(&row.action)?,
        resource_kind: ResourceKind::from_db(&row.resource_kind)?,
        at: Timestamp::from_millis(row.at),
        id: row.id,
        actor: row.actor,
        resource_id: row.resource_id,
        account_id: row.account_id,
        to_account_id: row.to_account_id,
        request_id: row.request_id,
        details,
        prev_hash: row.prev_hash,
        hash: row.hash,
    })
}

/// Walks the chain up to its head and reports the first event where it does not hold.
///
/// The head is read first: every event up to it is committed (an append writes both in one
/// transaction), and events appended during the walk lie beyond it, left for the next run. So
/// a live system verifies clean while it keeps appending.
pub async fn verify(store: &Store) -> Result<AuditVerification> {
    verify_to(store, None).await
}

/// [`verify`], and also that the chain still holds the events `checkpoint` signed: as many, and
/// the same last one. A chain cut short and its head rewound verifies clean on its own; against
/// a checkpoint made before the cut, the first missing event is named.
pub async fn verify_to(
    store: &Store,
    checkpoint: Option<&AuditCheckpoint>,
) -> Result<AuditVerification> {
    let (head_seq, head_hash) = store.read().await?.audit_head().await?;
    let walk = walk(
        store,
        (0, GENESIS_HASH.to_owned()),
        head_seq,
        checkpoint.map(|c| c.seq),
    )
    .await?;
    if let Some(broken) = walk.broken {
        return Ok(broken_chain(walk.checked, broken));
    }
    let checked = walk.checked;
    if let Some(checkpoint) = checkpoint {
        if checkpoint.seq > checked {
            let reason = format!(
                "event {} is missing: the checkpoint signed at {} covers {} events but the log ends at event {checked}: events {}..={} were removed from its end",
                checked + 1,
                checkpoint.at,
                checkpoint.seq,
                checked + 1,
                checkpoint.seq
            );
            return Ok(broken_chain(
                checked,
                BrokenLink {
                    seq: checked + 1,
                    event_id: None,
                    reason,
                },
            ));
        }
        if let Some((id, hash)) = walk.watched.filter(|(_, hash)| *hash != checkpoint.hash) {
            let reason = format!(
                "it is not the event the checkpoint signed at {} (hash {hash}, signed {}): the chain was rewritten up to here",
                checkpoint.at, checkpoint.hash
            );
            return Ok(broken_chain(
                checkpoint.seq - 1,
                BrokenLink {
                    seq: checkpoint.seq,
                    event_id: Some(id),
                    reason,
                },
            ));
        }
    }
    if head_hash != walk.last_hash {
        let reason = format!(
            "the chain head's hash {head_hash} is not the last event's ({}): the head or the last event was altered",
            walk.last_hash
        );
        return Ok(broken_chain(
            checked - 1,
            BrokenLink {
                seq: checked,
                event_id: None,
                reason,
            },
        ));
    }
    Ok(AuditVerification {
        ok: true,
        events_checked: checked,
        head_hash: Some(walk.last_hash),
        first_bad: None,
    })
}

/// What a walk along the chain found.
struct Walk {
    /// The last event that holds.
    checked: i64,
    last_hash: String,
    broken: Option<BrokenLink>,
    /// Id and hash of the event at the watched seq, if it was reached.
    watched: Option<(String, String)>,
}

/// Checks the events after `from` (a seq and its hash) up to `to_seq` link one to the next.
async fn walk(store: &Store, from: (i64, String), to_seq: i64, watch: Option<i64>) -> Result<Walk> {
    let (mut checked, mut last_hash) = from;
    let mut watched = None;
    while checked < to_seq {
        let batch = store
            .read()
            .await?
            .audit_range(checked, VERIFY_BATCH.min(to_seq - checked))
            .await?;
        if batch.is_empty() {
            break;
        }
        for row in batch {
            let expected_seq = checked + 1;
            if let Some(reason) = check_link(&row, expected_seq, &last_hash) {
                // Rows are read in seq order, so a higher seq means events are missing.
                let broken = if row.seq > expected_seq {
                    BrokenLink {
                        seq: expected_seq,
                        event_id: None,
                        reason,
                    }
                } else {
                    BrokenLink {
                        seq: row.seq,
                        event_id: Some(row.id),
                        reason,
                    }
                };
                return Ok(Walk {
                    checked,
                    last_hash,
                    broken: Some(broken),
                    watched,
                });
            }
            if watch == Some(row.seq) {
                watched = Some((row.id, row.hash.clone()));
            }
            last_hash = row.hash;
            checked = expected_seq;
        }
    }
    let broken = (checked < to_seq).then(|| BrokenLink {
        seq: checked + 1,
        event_id: None,
        reason: format!(
            "the chain head records {to_seq} events but the log ends at event {checked}: events were deleted from its end"
        ),
    });
    Ok(Walk {
        checked,
        last_hash,
        broken,
        watched,
    })
}

fn check_link(row: &AuditRow, expected_seq: i64, prev_hash: &str) -> Option<String> {
    if row.seq != expected_seq {
        return Some(format!(
            "event {expected_seq} is missing: the next stored event is {} ({})",
            row.seq, row.id
        ));
    }
    if row.prev_hash != prev_hash {
        return Some(format!(
            "its prev_hash {} is not the hash of the event before it ({prev_hash}): events were removed or reordered",
            row.prev_hash
        ));
    }
    let recomputed = event_hash(row);
    if row.hash != recomputed {
        return Some(format!(
            "its content does not match its hash (stored {}, recomputed {recomputed}): the event was edited",
            row.hash
        ));
    }
    None
}

fn broken_chain(checked_ok: i64, first_bad: BrokenLink) -> AuditVerification {
    AuditVerification {
        ok: false,
        events_checked: checked_ok,
        head_hash: None,
        first_bad: Some(first_bad),
    }
}

/// Largest page of events one listing returns.
pub const MAX_PAGE: i64 = 500;

/// A page of events in chain order: the caller's account's (as source or destination) for
/// account tokens, all for operators; events of destroyed resources included.
pub async fn list(
    app: &crate::app::App,
    caller: &crate::app::Caller,
    resource_id: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> crate::error::Result<control_api::audit::AuditPage> {
    if resource_id.is_some_and(|id| !crate::ids::is_id(id)) {
        return Err(crate::error::Error::invalid(
            "resource_id",
            "is not a resource id such as agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ",
        ));
    }
    let after_seq = match cursor {
        None => 0,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| {
                crate::error::Error::invalid("cursor", "is not a cursor this API returned")
            })?,
    };
    let limit = limit.clamp(1, MAX_PAGE);
    let rows = app
        .store
        .read()
        .await?
        .audit_events(&crate::store::AuditFilter {
            account_id: caller.principal.account_scope(),
            resource_id,
            after_seq,
            limit: limit + 1,
        })
        .await?;
    let (rows, next_cursor) = crate::paging::one_page(rows, limit, |e| e.seq.to_string());
    let items: Vec<AuditEvent> = rows.into_iter().map(to_api).collect::<Result<_>>()?;
    Ok(control_api::audit::AuditPage { items, next_cursor })
}
