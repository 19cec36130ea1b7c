//! What control last saw of each Agent's vm-agent, written behind, and its health mark.

use super::{Result, Tx, on_conn};

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

/// Rows per multi-row statement when writing liveness behind.
pub const LIVENESS_BATCH: usize = 500;

impl Tx {
    /// Writes liveness rows in one statement. A row only replaces one that is not newer, so a
    /// replica writing behind never takes an Agent back from the replica that saw it last.
    /// A row newer than the stored one clears the unhealthy mark (the Agent was heard from);
    /// the same heartbeat written again leaves it. Returns the Agents actually written.
    pub async fn write_liveness(&mut self, rows: &[LivenessRow]) -> Result<Vec<String>> {
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
                   report = excluded.report,
                   unhealthy_since = CASE WHEN excluded.last_seen_at > agent_liveness.last_seen_at
                                          THEN NULL ELSE agent_liveness.unhealthy_since END
                 WHERE agent_liveness.last_seen_at <= excluded.last_seen_at RETURNING agent_id",
            );
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
}
