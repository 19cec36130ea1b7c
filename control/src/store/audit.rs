//! Audit events (insert-only; the database refuses UPDATE and DELETE) and the chain head.

use super::{Result, Tx, on_conn};

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

impl Tx {
    /// Locks the chain head for the rest of the transaction and returns `(seq, hash)` of the
    /// last event. Every append starts here, so appends from any number of tasks or replicas
    /// form one chain.
    pub async fn lock_audit_head(&mut self) -> Result<(i64, String)> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "UPDATE audit_head SET seq = seq WHERE singleton = 1 RETURNING seq, hash",
        )
        .fetch_one(conn)
        .await)?)
    }

    pub async fn audit_head(&mut self) -> Result<(i64, String)> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT seq, hash FROM audit_head WHERE singleton = 1",
        )
        .fetch_one(conn)
        .await)?)
    }

    pub async fn set_audit_head(&mut self, seq: i64, hash: &str) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE audit_head SET seq = $1, hash = $2 WHERE singleton = 1",
        )
        .bind(seq)
        .bind(hash)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
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
}
