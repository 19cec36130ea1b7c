//! State periods: the ledger's raw material. Rows are closed, never deleted.

use control_api::agents::PeriodState;

use super::{DbText, Result, StoreError, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodRow {
    pub id: String,
    pub agent_id: String,
    pub account_id: String,
    pub state: PeriodState,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RawPeriod {
    id: String,
    agent_id: String,
    account_id: String,
    state: String,
    started_at: i64,
    ended_at: Option<i64>,
}

impl TryFrom<RawPeriod> for PeriodRow {
    type Error = StoreError;
    fn try_from(raw: RawPeriod) -> Result<Self> {
        Ok(Self {
            state: PeriodState::from_db(&raw.state)?,
            id: raw.id,
            agent_id: raw.agent_id,
            account_id: raw.account_id,
            started_at: raw.started_at,
            ended_at: raw.ended_at,
        })
    }
}

/// The open period a caller holding the Agent's lock just read must still be there.
fn expect_one(rows: u64, what: &str, period_id: &str) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "cannot {what} period {period_id}: it is not open"
        )))
    }
}

fn convert(raws: Vec<RawPeriod>) -> Result<Vec<PeriodRow>> {
    raws.into_iter().map(PeriodRow::try_from).collect()
}

impl Tx {
    pub async fn insert_period(&mut self, period: &PeriodRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO state_periods (id, agent_id, account_id, state, started_at, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&period.id)
        .bind(&period.agent_id)
        .bind(&period.account_id)
        .bind(period.state.as_db())
        .bind(period.started_at)
        .bind(period.ended_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn open_period(&mut self, agent_id: &str) -> Result<Option<PeriodRow>> {
        let raw: Option<RawPeriod> = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, agent_id, account_id, state, started_at, ended_at
             FROM state_periods WHERE agent_id = $1 AND ended_at IS NULL",
        )
        .bind(agent_id)
        .fetch_optional(conn)
        .await)?;
        raw.map(PeriodRow::try_from).transpose()
    }

    pub async fn close_period(&mut self, period_id: &str, at: i64) -> Result<()> {
        let closed = on_conn!(self, conn => sqlx::query(
            "UPDATE state_periods SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(period_id)
        .bind(at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        expect_one(closed, "close", period_id)
    }

    /// Rewrites a still-empty open period (one that started at this very instant).
    pub async fn relabel_open_period(
        &mut self,
        period_id: &str,
        account_id: &str,
        state: PeriodState,
    ) -> Result<()> {
        let relabelled = on_conn!(self, conn => sqlx::query(
            "UPDATE state_periods SET account_id = $2, state = $3
             WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(period_id)
        .bind(account_id)
        .bind(state.as_db())
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        expect_one(relabelled, "relabel", period_id)
    }

    /// An Agent's periods overlapping `[from, to)`, oldest first, optionally of one account.
    pub async fn agent_periods(
        &mut self,
        agent_id: &str,
        account_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<PeriodRow>> {
        let raws = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, agent_id, account_id, state, started_at, ended_at
             FROM state_periods
             WHERE agent_id = $1 AND account_id = COALESCE($2, account_id)
               AND started_at < $4 AND (ended_at IS NULL OR ended_at > $3)
             ORDER BY started_at, id",
        )
        .bind(agent_id)
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await)?;
        convert(raws)
    }

    /// Every period of every Agent overlapping `[from, to)`, destroyed Agents included.
    pub async fn periods_overlapping(&mut self, from: i64, to: i64) -> Result<Vec<PeriodRow>> {
        let raws = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, agent_id, account_id, state, started_at, ended_at
             FROM state_periods
             WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1)
             ORDER BY agent_id, started_at",
        )
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await)?;
        convert(raws)
    }
}

impl Tx {
    /// The start of the oldest period, if there is any.
    pub async fn earliest_period_start(&mut self) -> Result<Option<i64>> {
        Ok(
            on_conn!(self, conn => sqlx::query_scalar("SELECT MIN(started_at) FROM state_periods")
            .fetch_one(conn)
            .await)?,
        )
    }
}
