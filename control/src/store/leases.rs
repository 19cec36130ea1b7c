//! Named leases: work one replica at a time should do (the reconciler, judging orphans).

use super::{Result, Tx, on_conn};

impl Tx {
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
