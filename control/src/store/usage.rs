//! Daily usage rows and the rollup's bookkeeping row.

use control_api::usage::ResourceKind;

use super::{DbText, Result, StoreError, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRowRecord {
    /// `YYYY-MM-DD`, UTC; sorts as text.
    pub day: String,
    pub resource_id: String,
    pub account_id: String,
    pub resource_kind: ResourceKind,
    pub running_s: i64,
    pub paused_s: i64,
}

#[derive(sqlx::FromRow)]
struct RawUsage {
    day: String,
    resource_id: String,
    account_id: String,
    resource_kind: String,
    running_s: i64,
    paused_s: i64,
}

impl TryFrom<RawUsage> for UsageRowRecord {
    type Error = StoreError;
    fn try_from(raw: RawUsage) -> Result<Self> {
        Ok(Self {
            resource_kind: ResourceKind::from_db(&raw.resource_kind)?,
            day: raw.day,
            resource_id: raw.resource_id,
            account_id: raw.account_id,
            running_s: raw.running_s,
            paused_s: raw.paused_s,
        })
    }
}

/// Where the rollup stands.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct RollupState {
    /// The last day whose rows are final (the day ended before the rollup ran).
    pub final_through: Option<String>,
    pub ran_at: Option<i64>,
}

impl Tx {
    /// Takes the rollup lock (the bookkeeping row) for the rest of the transaction, so two
    /// replicas rolling up at once run one after the other, and returns where it stands.
    pub async fn lock_rollup(&mut self) -> Result<RollupState> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "UPDATE usage_rollup SET singleton = singleton WHERE singleton = 1
             RETURNING final_through, ran_at",
        )
        .fetch_one(conn)
        .await)?)
    }

    pub async fn rollup_state(&mut self) -> Result<RollupState> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT final_through, ran_at FROM usage_rollup WHERE singleton = 1",
        )
        .fetch_one(conn)
        .await)?)
    }

    pub async fn record_rollup(&mut self, final_through: Option<&str>, ran_at: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE usage_rollup SET final_through = $1, ran_at = $2 WHERE singleton = 1",
        )
        .bind(final_through)
        .bind(ran_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Replaces every row of `day` with `rows`.
    pub async fn replace_usage_day(&mut self, day: &str, rows: &[UsageRowRecord]) -> Result<()> {
        on_conn!(self, conn => sqlx::query("DELETE FROM usage_daily WHERE day = $1")
            .bind(day)
            .execute(&mut *conn)
            .await
            .map(|done| done.rows_affected()))?;
        for row in rows {
            on_conn!(self, conn => sqlx::query(
                "INSERT INTO usage_daily (day, resource_id, account_id, resource_kind, running_s, paused_s)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&row.day)
            .bind(&row.resource_id)
            .bind(&row.account_id)
            .bind(row.resource_kind.as_db())
            .bind(row.running_s)
            .bind(row.paused_s)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        }
        Ok(())
    }

    /// Rows of days `from..=to`, optionally of one account, ordered by day, resource, account.
    pub async fn usage(
        &mut self,
        account_id: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<UsageRowRecord>> {
        let raws: Vec<RawUsage> = on_conn!(self, conn => sqlx::query_as(
            "SELECT day, resource_id, account_id, resource_kind, running_s, paused_s
             FROM usage_daily
             WHERE account_id = COALESCE($1, account_id) AND day >= $2 AND day <= $3
             ORDER BY day, resource_id, account_id",
        )
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await)?;
        raws.into_iter().map(UsageRowRecord::try_from).collect()
    }
}
