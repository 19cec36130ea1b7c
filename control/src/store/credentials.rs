//! Agent credentials: what a vm-agent heartbeats with, stored as a hash.

use super::{Result, Tx, on_conn};

/// An agent credential as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRow {
    pub id: String,
    pub agent_id: String,
    pub secret_hash: String,
    pub revoked_at: Option<i64>,
}

impl Tx {
    pub async fn insert_credential(&mut self, row: &CredentialRow, now: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO agent_credentials (id, agent_id, secret_hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.id)
        .bind(&row.agent_id)
        .bind(&row.secret_hash)
        .bind(now)
        .bind(row.revoked_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn credential(&mut self, id: &str) -> Result<Option<CredentialRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, agent_id, secret_hash, revoked_at FROM agent_credentials WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Revokes every credential of `agent_id` (its VM is gone).
    pub async fn revoke_agent_credentials(&mut self, agent_id: &str, now: i64) -> Result<u64> {
        Ok(on_conn!(self, conn => sqlx::query(
            "UPDATE agent_credentials SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL",
        )
        .bind(agent_id)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?)
    }
}
