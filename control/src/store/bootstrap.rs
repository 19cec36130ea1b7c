//! Bootstrap tokens: the single-use secret cloud-init delivers, stored as a hash.

use super::{Result, Tx, on_conn};

/// A bootstrap token as stored: its hash and lifetime.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct BootstrapRow {
    pub token_hash: String,
    /// The unused token this one replaced, still good until either is spent (migration 0005
    /// says why).
    pub previous_token_hash: Option<String>,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

impl Tx {
    /// Stores the hash of a new bootstrap token for `agent_id`, replacing an unused earlier one,
    /// which stays good beside it until either is spent (a server an earlier attempt created
    /// holds it). A spent token is never re-armed: returns false, changing nothing, when the
    /// Agent's VM has traded its token already.
    pub async fn put_bootstrap(
        &mut self,
        agent_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool> {
        const SQL: &str = "INSERT INTO agent_bootstrap
                 (agent_id, token_hash, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, NULL)
             ON CONFLICT (agent_id) DO UPDATE
             SET previous_token_hash = agent_bootstrap.token_hash,
                 token_hash = excluded.token_hash, created_at = excluded.created_at,
                 expires_at = excluded.expires_at
             WHERE agent_bootstrap.used_at IS NULL";
        Ok(self.arm(SQL, agent_id, token_hash, now, expires_at).await? == 1)
    }

    /// Stores the hash of a fresh bootstrap token for `agent_id` whatever became of the last
    /// one: an operator's explicit re-bootstrap, never a retry's. The spent token stays spent
    /// (its hash is gone); only the new one can register.
    pub async fn replace_bootstrap(
        &mut self,
        agent_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO agent_bootstrap
                 (agent_id, token_hash, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, NULL)
             ON CONFLICT (agent_id) DO UPDATE
             SET token_hash = excluded.token_hash, previous_token_hash = NULL,
                 created_at = excluded.created_at, expires_at = excluded.expires_at,
                 used_at = NULL";
        self.arm(SQL, agent_id, token_hash, now, expires_at).await?;
        Ok(())
    }

    /// Runs one of the two upserts above; returns the rows it changed.
    async fn arm(
        &mut self,
        sql: &'static str,
        agent_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<u64> {
        Ok(on_conn!(self, conn => sqlx::query(sql)
            .bind(agent_id)
            .bind(token_hash)
            .bind(now)
            .bind(expires_at)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?)
    }

    pub async fn bootstrap(&mut self, agent_id: &str) -> Result<Option<BootstrapRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT token_hash, previous_token_hash, expires_at, used_at
             FROM agent_bootstrap WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Marks the bootstrap token used. Returns false if it was used meanwhile.
    pub async fn spend_bootstrap(&mut self, agent_id: &str, now: i64) -> Result<bool> {
        let spent = on_conn!(self, conn => sqlx::query(
            "UPDATE agent_bootstrap SET used_at = $2 WHERE agent_id = $1 AND used_at IS NULL",
        )
        .bind(agent_id)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(spent == 1)
    }
}
