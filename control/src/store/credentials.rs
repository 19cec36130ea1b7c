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

/// A credential in force, with the record of its Agent (not destroyed), as loaded in pages.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveCredentialRow {
    pub id: String,
    pub agent_id: String,
    pub secret_hash: String,
    pub account_id: String,
    pub state: String,
    pub operation: Option<String>,
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

    /// Revokes every credential of `agent_id` (its VM is gone, or registered again); returns
    /// the ids of those it revoked, for a replica to stop trusting its cached copies at once.
    pub async fn revoke_agent_credentials(
        &mut self,
        agent_id: &str,
        now: i64,
    ) -> Result<Vec<String>> {
        Ok(on_conn!(self, conn => sqlx::query_scalar(
            "UPDATE agent_credentials SET revoked_at = $2 WHERE agent_id = $1 AND revoked_at IS NULL
             RETURNING id",
        )
        .bind(agent_id)
        .bind(now)
        .fetch_all(conn)
        .await)?)
    }

    /// Up to `limit` credentials in force, of Agents not destroyed, whose ids sort after
    /// `after`, in id order, each with its Agent's record: how a replica loads them all in
    /// pages (at start, and again every `credential_ttl`) instead of one read per Agent.
    pub async fn live_credentials_after(
        &mut self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<LiveCredentialRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT c.id, c.agent_id, c.secret_hash, a.account_id, a.state, a.operation
             FROM agent_credentials c JOIN agents a ON a.id = c.agent_id
             WHERE c.id > $1 AND c.revoked_at IS NULL AND a.destroyed_at IS NULL
             ORDER BY c.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await)?)
    }
}
