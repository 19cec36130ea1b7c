//! Idempotency-Key records: a claim while the first request runs, then its stored response.

use super::{Result, Tx, on_conn};

/// What a new request with a given key finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key is ours: run the request and store its response in the same transaction.
    Claimed,
    /// An earlier request with this key completed: replay its answer.
    Completed { status: u16, body: String },
    /// An earlier request with this key is still running.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

#[derive(sqlx::FromRow)]
struct RawKey {
    request_hash: String,
    status: Option<i64>,
    response_body: Option<String>,
    locked_until: i64,
}

impl Tx {
    /// Claims `key` for this request, or reports what an earlier request with it left. A claim
    /// whose holder died (lock expired, no response) is taken over.
    pub async fn claim_idempotency_key(
        &mut self,
        principal: &str,
        key: &str,
        request_hash: &str,
        now: i64,
        locked_until: i64,
    ) -> Result<IdempotencyClaim> {
        let inserted = on_conn!(self, conn => sqlx::query(
            "INSERT INTO idempotency_keys (principal, idem_key, request_hash, status, response_body,
                                           locked_until, created_at)
             VALUES ($1, $2, $3, NULL, NULL, $4, $5)
             ON CONFLICT (principal, idem_key) DO NOTHING",
        )
        .bind(principal)
        .bind(key)
        .bind(request_hash)
        .bind(locked_until)
        .bind(now)
        .execute(&mut *conn)
        .await
            .map(|done| done.rows_affected()))?;
        if inserted == 1 {
            return Ok(IdempotencyClaim::Claimed);
        }
        let existing: RawKey = on_conn!(self, conn => sqlx::query_as(
            "SELECT request_hash, status, response_body, locked_until
             FROM idempotency_keys WHERE principal = $1 AND idem_key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_one(conn)
        .await)?;
        if existing.request_hash != request_hash {
            return Ok(IdempotencyClaim::Mismatch);
        }
        if let (Some(status), Some(body)) = (existing.status, existing.response_body) {
            let status = u16::try_from(status).unwrap_or(500);
            return Ok(IdempotencyClaim::Completed { status, body });
        }
        if existing.locked_until >= now {
            return Ok(IdempotencyClaim::InFlight);
        }
        let taken = on_conn!(self, conn => sqlx::query(
            "UPDATE idempotency_keys SET locked_until = $3
             WHERE principal = $1 AND idem_key = $2 AND status IS NULL AND locked_until < $4",
        )
        .bind(principal)
        .bind(key)
        .bind(locked_until)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(if taken == 1 {
            IdempotencyClaim::Claimed
        } else {
            IdempotencyClaim::InFlight
        })
    }

    /// Stores the response of the request holding the claim.
    pub async fn complete_idempotency_key(
        &mut self,
        principal: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE idempotency_keys SET status = $3, response_body = $4
             WHERE principal = $1 AND idem_key = $2 AND status IS NULL",
        )
        .bind(principal)
        .bind(key)
        .bind(i64::from(status))
        .bind(body)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Drops a claim whose request ended without a stored response, so a retry can run.
    /// Returns whether there was such a claim.
    pub async fn release_idempotency_key(&mut self, principal: &str, key: &str) -> Result<bool> {
        let released = on_conn!(self, conn => sqlx::query(
            "DELETE FROM idempotency_keys WHERE principal = $1 AND idem_key = $2 AND status IS NULL",
        )
        .bind(principal)
        .bind(key)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(released == 1)
    }

    /// Forgets keys created before `before`; returns how many.
    pub async fn purge_idempotency_keys(&mut self, before: i64) -> Result<u64> {
        let result = on_conn!(self, conn => sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < $1 AND status IS NOT NULL",
        )
        .bind(before)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result)
    }
}
