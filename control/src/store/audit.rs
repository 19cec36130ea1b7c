//! Audit events (insert-only; the database refuses UPDATE and DELETE) and the chain head.

use super::{Result, Tx, TxInner, on_conn};

/// An audit event exactly as stored. Text columns stay text so that `audit verify` can hash a
/// tampered row and name it instead of failing to parse it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub resource_kind: String,
    pub resource_id: String,
    pub account_id: String,
    pub to_account_id: Option<String>,
    pub request_id: Option<String>,
    /// JSON text, hashed as stored.
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Which events a listing returns.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter<'a> {
    /// Only events whose source or destination account is this one.
    pub account_id: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub after_seq: i64,
    pub limit: i64,
}

/// A signed checkpoint of the chain head as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRow {
    pub seq: i64,
    pub hash: String,
    pub at: i64,
    /// Hex, 32 bytes (ed25519).
    pub public_key: String,
    /// Hex, 64 bytes.
    pub signature: String,
}

impl Tx {
    /// Locks the chain head for the rest of the transaction and returns `(seq, hash)` of the
    /// last event. Every append starts here, so appends from any number of tasks or replicas
    /// form one chain. On PostgreSQL the lock is taken by `audit_lock_head()`, which runs as
    /// the schema's owner, so a runtime role needs no UPDATE privilege on the head.
    pub async fn lock_audit_head(&mut self) -> Result<(i64, String)> {
        Ok(match &mut self.inner {
            TxInner::Sqlite(tx) => {
                sqlx::query_as(
                    "UPDATE audit_head SET seq = seq WHERE singleton = 1 RETURNING seq, hash",
                )
                .fetch_one(&mut **tx)
                .await
            }
            TxInner::Postgres(tx) => {
                sqlx::query_as("SELECT seq, hash FROM audit_lock_head()")
                    .fetch_one(&mut **tx)
                    .await
            }
        }?)
    }

    pub async fn audit_head(&mut self) -> Result<(i64, String)> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, hash FROM audit_head WHERE singleton = 1",
        )
        .fetch_one(conn)
        .await)?)
    }

    /// `(seq, hash)` of the stored event with the highest seq, if any.
    pub async fn newest_audit_event(&mut self) -> Result<Option<(i64, String)>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(conn)
        .await)?)
    }

    pub async fn insert_audit(&mut self, event: &AuditRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO audit_events (seq, id, at, actor, action, resource_kind, resource_id,
                                       account_id, to_account_id, request_id, details,
                                       prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(event.seq)
        .bind(&event.id)
        .bind(event.at)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.resource_kind)
        .bind(&event.resource_id)
        .bind(&event.account_id)
        .bind(&event.to_account_id)
        .bind(&event.request_id)
        .bind(&event.details)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Events after `after_seq` in chain order, at most `limit`.
    pub async fn audit_range(&mut self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, id, at, actor, action, resource_kind, resource_id, account_id,
                    to_account_id, request_id, details, prev_hash, hash
             FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(conn)
        .await)?)
    }

    pub async fn audit_events(&mut self, filter: &AuditFilter<'_>) -> Result<Vec<AuditRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, id, at, actor, action, resource_kind, resource_id, account_id,
                    to_account_id, request_id, details, prev_hash, hash
             FROM audit_events
             WHERE seq > $1
               AND resource_id = COALESCE($2, resource_id)
               AND (CAST($3 AS TEXT) IS NULL OR account_id = $3 OR to_account_id = $3)
             ORDER BY seq
             LIMIT $4",
        )
        .bind(filter.after_seq)
        .bind(filter.resource_id)
        .bind(filter.account_id)
        .bind(filter.limit)
        .fetch_all(conn)
        .await)?)
    }

    pub async fn insert_audit_checkpoint(&mut self, checkpoint: &CheckpointRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at, public_key, signature)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(checkpoint.at)
        .bind(&checkpoint.public_key)
        .bind(&checkpoint.signature)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Checkpoints newest first, below `before_seq`, at most `limit`.
    pub async fn audit_checkpoints(
        &mut self,
        before_seq: i64,
        limit: i64,
    ) -> Result<Vec<CheckpointRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, hash, at, public_key, signature FROM audit_checkpoints
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(before_seq)
        .bind(limit)
        .fetch_all(conn)
        .await)?)
    }
}
