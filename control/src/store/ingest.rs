//! What agents report: bootstrap tokens, credentials, liveness, and the replicas and leases
//! that share the work of judging it.

use super::{Result, Tx, on_conn};

/// A bootstrap token as stored: its hash and lifetime.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct BootstrapRow {
    pub token_hash: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// An agent credential as stored.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRow {
    pub id: String,
    pub agent_id: String,
    pub secret_hash: String,
    pub revoked_at: Option<i64>,
}

/// One Agent's liveness, as written behind or at a transition.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LivenessRow {
    pub agent_id: String,
    pub custodian: String,
    pub last_seen_at: i64,
    pub boot_id: String,
    pub sequence: i64,
    pub agent_version: String,
    pub tunnel_state: String,
    pub slice_state: String,
    /// The latest heartbeat, as JSON.
    pub report: String,
    pub unhealthy_since: Option<i64>,
}

/// What a replica needs to know of an Agent to judge its heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentChange {
    pub id: String,
    pub account_id: String,
    pub state: String,
    pub operation: Option<String>,
    pub destroyed_at: Option<i64>,
    pub updated_at: i64,
}

/// Rows per multi-row statement when writing liveness behind.
pub const LIVENESS_BATCH: usize = 500;

impl Tx {
    /// Stores the hash of a new bootstrap token for `agent_id`, replacing an unused earlier one.
    pub async fn put_bootstrap(
        &mut self,
        agent_id: &str,
        token_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO agent_bootstrap (agent_id, token_hash, created_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, NULL)
             ON CONFLICT (agent_id) DO UPDATE
             SET token_hash = excluded.token_hash, created_at = excluded.created_at,
                 expires_at = excluded.expires_at, used_at = NULL",
        )
        .bind(agent_id)
        .bind(token_hash)
        .bind(now)
        .bind(expires_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn bootstrap(&mut self, agent_id: &str) -> Result<Option<BootstrapRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT token_hash, expires_at, used_at FROM agent_bootstrap WHERE agent_id = $1",
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

    /// Writes liveness rows in one statement. A row only replaces one that is not newer, so a
    /// replica writing behind never takes an Agent back from the replica that saw it last.
    /// `healthy` rows also clear the unhealthy mark. Returns the Agents actually written.
    pub async fn write_liveness(
        &mut self,
        rows: &[LivenessRow],
        healthy: bool,
    ) -> Result<Vec<String>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let written: Vec<String> = on_conn!(self, conn => {
            let mut query = sqlx::QueryBuilder::new(
                "INSERT INTO agent_liveness (agent_id, custodian, last_seen_at, boot_id, sequence,
                 agent_version, tunnel_state, slice_state, report, unhealthy_since) ",
            );
            query.push_values(rows, |mut values, row| {
                values
                    .push_bind(&row.agent_id)
                    .push_bind(&row.custodian)
                    .push_bind(row.last_seen_at)
                    .push_bind(&row.boot_id)
                    .push_bind(row.sequence)
                    .push_bind(&row.agent_version)
                    .push_bind(&row.tunnel_state)
                    .push_bind(&row.slice_state)
                    .push_bind(&row.report)
                    .push_bind(row.unhealthy_since);
            });
            query.push(
                " ON CONFLICT (agent_id) DO UPDATE SET custodian = excluded.custodian,
                   last_seen_at = excluded.last_seen_at, boot_id = excluded.boot_id,
                   sequence = excluded.sequence, agent_version = excluded.agent_version,
                   tunnel_state = excluded.tunnel_state, slice_state = excluded.slice_state,
                   report = excluded.report",
            );
            if healthy {
                query.push(", unhealthy_since = NULL");
            }
            query.push(" WHERE agent_liveness.last_seen_at <= excluded.last_seen_at RETURNING agent_id");
            query.build_query_scalar().fetch_all(conn).await
        })?;
        Ok(written)
    }

    pub async fn liveness(&mut self, agent_id: &str) -> Result<Option<LivenessRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT agent_id, custodian, last_seen_at, boot_id, sequence, agent_version,
                    tunnel_state, slice_state, report, unhealthy_since
             FROM agent_liveness WHERE agent_id = $1",
        )
        .bind(agent_id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Marks the Agent unhealthy if `custodian` still judges it and it has not been seen since
    /// `silent_since`. Returns whether it did.
    pub async fn mark_unhealthy(
        &mut self,
        agent_id: &str,
        custodian: &str,
        silent_since: i64,
        now: i64,
    ) -> Result<bool> {
        let marked = on_conn!(self, conn => sqlx::query(
            "UPDATE agent_liveness SET unhealthy_since = $4
             WHERE agent_id = $1 AND custodian = $2 AND unhealthy_since IS NULL AND last_seen_at < $3",
        )
        .bind(agent_id)
        .bind(custodian)
        .bind(silent_since)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(marked == 1)
    }

    /// Running, healthy Agents judged by `custodian` and silent since before `silent_since`.
    pub async fn silent_agents(
        &mut self,
        custodian: &str,
        silent_since: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT l.agent_id, a.account_id, l.last_seen_at
             FROM agent_liveness l JOIN agents a ON a.id = l.agent_id
             WHERE l.custodian = $1 AND l.unhealthy_since IS NULL AND l.last_seen_at < $2
               AND a.state = 'running' AND a.destroyed_at IS NULL AND a.operation IS NULL",
        )
        .bind(custodian)
        .bind(silent_since)
        .fetch_all(conn)
        .await)?)
    }

    /// Lifecycle changes since `after` (strictly), oldest first.
    pub async fn agents_changed_since(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AgentChange>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, account_id, state, operation, destroyed_at, updated_at
             FROM agents WHERE updated_at > $1 ORDER BY updated_at, id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await)?)
    }

    pub async fn agent_change(&mut self, id: &str) -> Result<Option<AgentChange>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, account_id, state, operation, destroyed_at, updated_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Records that the Agent's VM was seen running: the compare-and-set on its row. Only an
    /// Agent recorded paused, with no operation under way, changes.
    pub async fn observe_running(&mut self, id: &str, now: i64) -> Result<bool> {
        let changed = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET state = 'running', updated_at = $2
             WHERE id = $1 AND state = 'paused' AND operation IS NULL AND destroyed_at IS NULL
               AND provider_id IS NOT NULL",
        )
        .bind(id)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Records the Agent's observed state when it disagrees with the provider (the
    /// reconciler). Only an Agent with no operation under way changes.
    pub async fn observe_state(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool> {
        let changed = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET state = $3, updated_at = $4
             WHERE id = $1 AND state = $2 AND operation IS NULL AND destroyed_at IS NULL",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(changed == 1)
    }

    /// Announces this replica as alive.
    pub async fn announce_replica(&mut self, id: &str, started_at: i64, now: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO replicas (id, started_at, seen_at) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
        )
        .bind(id)
        .bind(started_at)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Replicas silent since before `before`, with when they were last seen.
    pub async fn silent_replicas(&mut self, before: i64) -> Result<Vec<(String, i64)>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, seen_at FROM replicas WHERE seen_at < $1 ORDER BY seen_at",
        )
        .bind(before)
        .fetch_all(conn)
        .await)?)
    }

    pub async fn forget_replica(&mut self, id: &str) -> Result<()> {
        on_conn!(self, conn => sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` until `until`. Returns whether it holds it.
    pub async fn acquire_lease(
        &mut self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let held = on_conn!(self, conn => sqlx::query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $4)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.until < $3 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now)
        .bind(until)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(held == 1)
    }
}

/// An Agent the reconciler compares with its provider.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ReconcileRow {
    pub id: String,
    pub account_id: String,
    pub provider: String,
    pub provider_id: String,
    pub state: String,
}

impl Tx {
    /// Live Agents with a VM and no operation under way.
    pub async fn reconcilable_agents(&mut self) -> Result<Vec<ReconcileRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, account_id, provider, provider_id, state FROM agents
             WHERE destroyed_at IS NULL AND operation IS NULL AND provider_id IS NOT NULL
             ORDER BY id",
        )
        .fetch_all(conn)
        .await)?)
    }
}
