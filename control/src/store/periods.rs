//! State periods: the ledger's raw material, for resources of any kind. Rows are closed, never
//! deleted (the database refuses both a DELETE and a change to a closed row).

use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;

use super::{DbText, Result, StoreError, Tx, on_conn};

/// What the ledger accounts for: a resource of some kind, by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceRef<'a> {
    pub kind: ResourceKind,
    pub id: &'a str,
}

impl<'a> ResourceRef<'a> {
    pub fn agent(id: &'a str) -> Self {
        Self {
            kind: ResourceKind::Agent,
            id,
        }
    }

    pub fn plain_vm(id: &'a str) -> Self {
        Self {
            kind: ResourceKind::PlainVm,
            id,
        }
    }
}

impl std::fmt::Display for ResourceRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_db(), self.id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodRow {
    pub id: String,
    pub resource_kind: ResourceKind,
    pub resource_id: String,
    pub account_id: String,
    pub state: PeriodState,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RawPeriod {
    id: String,
    resource_kind: String,
    resource_id: String,
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
            resource_kind: ResourceKind::from_db(&raw.resource_kind)?,
            id: raw.id,
            resource_id: raw.resource_id,
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

impl PeriodRow {
    pub fn resource(&self) -> ResourceRef<'_> {
        ResourceRef {
            kind: self.resource_kind,
            id: &self.resource_id,
        }
    }
}

fn convert(raws: Vec<RawPeriod>) -> Result<Vec<PeriodRow>> {
    raws.into_iter().map(PeriodRow::try_from).collect()
}

impl Tx {
    pub async fn insert_period(&mut self, period: &PeriodRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO state_periods
                 (id, resource_kind, resource_id, account_id, state, started_at, ended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&period.id)
        .bind(period.resource_kind.as_db())
        .bind(&period.resource_id)
        .bind(&period.account_id)
        .bind(period.state.as_db())
        .bind(period.started_at)
        .bind(period.ended_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn open_period(&mut self, resource: ResourceRef<'_>) -> Result<Option<PeriodRow>> {
        let raw: Option<RawPeriod> = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, resource_kind, resource_id, account_id, state, started_at, ended_at
             FROM state_periods
             WHERE resource_kind = $1 AND resource_id = $2 AND ended_at IS NULL",
        )
        .bind(resource.kind.as_db())
        .bind(resource.id)
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

    /// A resource's periods overlapping `[from, to)`, oldest first, optionally of one account.
    pub async fn resource_periods(
        &mut self,
        resource: ResourceRef<'_>,
        account_id: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<PeriodRow>> {
        let raws = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, resource_kind, resource_id, account_id, state, started_at, ended_at
             FROM state_periods
             WHERE resource_kind = $1 AND resource_id = $2
               AND account_id = COALESCE($3, account_id)
               AND started_at < $5 AND (ended_at IS NULL OR ended_at > $4)
             ORDER BY started_at, id",
        )
        .bind(resource.kind.as_db())
        .bind(resource.id)
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await)?;
        convert(raws)
    }

    /// Every period of every resource overlapping `[from, to)`, destroyed ones included.
    pub async fn periods_overlapping(&mut self, from: i64, to: i64) -> Result<Vec<PeriodRow>> {
        let raws = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, resource_kind, resource_id, account_id, state, started_at, ended_at
             FROM state_periods
             WHERE started_at < $2 AND (ended_at IS NULL OR ended_at > $1)
             ORDER BY resource_kind, resource_id, started_at, id",
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
