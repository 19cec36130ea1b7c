//! The running control replicas, which announce themselves so others can tell one is gone.

use super::{Result, Tx, on_conn};

impl Tx {
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

    /// When replica `id` last announced itself, if it ever did.
    pub async fn replica_seen_at(&mut self, id: &str) -> Result<Option<i64>> {
        let found: Option<(i64,)> = on_conn!(self, conn => sqlx::query_as(
            "SELECT seen_at FROM replicas WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?;
        Ok(found.map(|(seen,)| seen))
    }

    pub async fn forget_replica(&mut self, id: &str) -> Result<()> {
        on_conn!(self, conn => sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }
}
