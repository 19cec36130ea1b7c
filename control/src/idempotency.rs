//! Idempotency-Key support for mutating requests.
//!
//! The HTTP layer claims the key before the handler runs (see `http::idempotency`); the handler's
//! service call then stores its response with [`record`] in the same transaction as its effect.
//! Either both commit or neither does, so a retry can never repeat an effect that happened, nor
//! find a stored answer for one that did not.

use std::time::Duration;

use control_api::Timestamp;
use serde::Serialize;

use crate::clock::millis;
use crate::store::{Result, Store, StoreError, Tx};

/// How long completed Idempotency-Key answers are kept.
pub const RETENTION: Duration = Duration::from_hours(24);

/// A claimed key: the caller's scope (an account, or the operators), the key itself, and the
/// token naming this request as the claim's holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
    pub claim: String,
}

/// Stores `body` with `status` as the answer every retry with `key` gets.
pub async fn record<T: Serialize>(
    tx: &mut Tx,
    key: Option<&IdempotencyKey>,
    status: u16,
    body: &T,
) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    let body = serde_json::to_string(body)
        .map_err(|e| StoreError::Corrupt(format!("encoding idempotent response: {e}")))?;
    if tx
        .complete_idempotency_key(&key.scope, &key.key, &key.claim, status, &body)
        .await?
    {
        Ok(())
    } else {
        // A retry took the claim over while this request ran: this request must not take
        // effect (the caller's transaction rolls back), the retry will.
        Err(StoreError::Superseded(
            "this request's Idempotency-Key claim expired and a retry took it over; this request changed nothing".to_owned(),
        ))
    }
}

/// Forgets answers older than [`RETENTION`] and claims stranded past their lease (a failed
/// request whose claim could not be released); returns how many keys it forgot.
pub async fn purge(store: &Store, now: Timestamp) -> Result<u64> {
    let now = now.as_millis();
    let mut tx = store.write().await?;
    let purged = tx
        .purge_idempotency_keys(now - millis(RETENTION), now)
        .await?;
    tx.commit().await?;
    Ok(purged)
}
