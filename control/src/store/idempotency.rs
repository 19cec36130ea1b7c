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
    /// Claims `key` for this request under `claim_token`, or reports what an earlier request
    /// with it left. A claim whose holder died (lock expired, no response) is taken over.
    #[allow(clippy::too_many_arguments)] // the claim's identity, fingerprint and lifetime
    pub async fn claim_idempotency_key(
        &mut self,
        principal: &str,
        key: &str,
        request_hash: &str,
        claim_token: &str,
        now: i64,
        locked_until: i64,
    ) -> Result<IdempotencyClaim> {
        // A concurrent release or purge can delete the row between our insert and our read or
        // our takeover: try again.
        for _ in 0..3 {
            let inserted = on_conn!(self, conn => sqlx::query(
                "INSERT INTO idempotency_keys (principal, idem_key, request_hash, claim_token, status,
                                               response_body, locked_until, created_at)
                 VALUES ($1, $2, $3, $4, NULL, NULL, $5, $6)
                 ON CONFLICT (principal, idem_key) DO NOTHING",
            )
            .bind(principal)
            .bind(key)
            .bind(request_hash)
            .bind(claim_token)
            .bind(locked_until)
            .bind(now)
            .execute(&mut *conn)
            .await
                .map(|done| done.rows_affected()))?;
            if inserted == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            let existing: Option<RawKey> = on_conn!(self, conn => sqlx::query_as(
                "SELECT request_hash, status, response_body, locked_until
                 FROM idempotency_keys WHERE principal = $1 AND idem_key = $2",
            )
            .bind(principal)
            .bind(key)
            .fetch_optional(conn)
            .await)?;
            let Some(existing) = existing else { continue };
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
                "UPDATE idempotency_keys SET locked_until = $3, claim_token = $4
                 WHERE principal = $1 AND idem_key = $2 AND status IS NULL AND locked_until < $5",
            )
            .bind(principal)
            .bind(key)
            .bind(locked_until)
            .bind(claim_token)
            .bind(now)
            .execute(conn)
            .await
                .map(|done| done.rows_affected()))?;
            if taken == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            // Taken over by a concurrent retry, or purged by the sweep: look again.
        }
        Ok(IdempotencyClaim::InFlight)
    }

    /// Stores the response of the request holding the claim. Returns false if the claim is
    /// no longer `claim_token`'s (it expired and a retry took it over).
    pub async fn complete_idempotency_key(
        &mut self,
        principal: &str,
        key: &str,
        claim_token: &str,
        status: u16,
        body: &str,
    ) -> Result<bool> {
        let completed = on_conn!(self, conn => sqlx::query(
            "UPDATE idempotency_keys SET status = $4, response_body = $5
             WHERE principal = $1 AND idem_key = $2 AND claim_token = $3 AND status IS NULL",
        )
        .bind(principal)
        .bind(key)
        .bind(claim_token)
        .bind(i64::from(status))
        .bind(body)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(completed == 1)
    }

    /// Drops the claim `claim_token` holds if its request ended without a stored response, so
    /// a retry can run. Returns whether there was such a claim.
    pub async fn release_idempotency_key(
        &mut self,
        principal: &str,
        key: &str,
        claim_token: &str,
    ) -> Result<bool> {
        let released = on_conn!(self, conn => sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE principal = $1 AND idem_key = $2 AND claim_token = $3 AND status IS NULL",
        )
        .bind(principal)
        .bind(key)
        .bind(claim_token)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(released == 1)
    }

    /// Forgets answered keys created before `answered_before`, and claims left without an
    /// answer whose lease ended before `now` (their request failed and its release did not
    /// happen). Never a claim whose lease still runs. Returns how many.
    pub async fn purge_idempotency_keys(&mut self, answered_before: i64, now: i64) -> Result<u64> {
        let result = on_conn!(self, conn => sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE (status IS NOT NULL AND created_at < $1)
                OR (status IS NULL AND locked_until < $2)",
        )
        .bind(answered_before)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result)
    }
}
