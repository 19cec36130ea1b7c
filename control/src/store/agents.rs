//! Agents: the row every lifecycle change locks first.

use control_api::agents::{AgentOperation, PeriodState};

use super::{DbText, Result, StoreError, Tx, on_conn};

/// The columns of an Agent joined with its pinned image and the current image's id.
macro_rules! agent_select {
    () => {
        "SELECT a.id, a.account_id, a.name, a.provider, a.provider_id, a.image_id, a.image_ref,
                a.env, a.state, a.operation, a.last_error, a.provisioned_at, a.destroyed_at,
                a.updated_at, i.version AS image_version, i.agent_version AS image_agent_version,
                i.manifest_digest AS image_manifest_digest,
                (SELECT c.image_id FROM current_image c WHERE c.singleton = 1) AS current_image_id,
                l.last_seen_at AS last_heartbeat_at, l.unhealthy_since AS unhealthy_since,
                a.cloned_from, a.cloning_to
         FROM agents a JOIN images i ON i.id = a.image_id
         LEFT JOIN agent_liveness l ON l.agent_id = a.id"
    };
}

/// Which operation a compare-and-set may begin, and on which states.
macro_rules! begin_operation {
    ($op:literal, $condition:literal) => {
        concat!(
            "UPDATE agents SET operation = '",
            $op,
            "', last_error = NULL, updated_at = $2
             WHERE id = $1 AND account_id = COALESCE($3, account_id)
               AND destroyed_at IS NULL AND operation IS NULL AND cloning_to IS NULL",
            $condition
        )
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub provider: String,
    pub provider_id: Option<String>,
    pub image_id: String,
    pub image_ref: String,
    /// JSON object pinned at provisioning.
    pub env: String,
    pub state: PeriodState,
    pub operation: Option<AgentOperation>,
    pub last_error: Option<String>,
    pub provisioned_at: i64,
    pub destroyed_at: Option<i64>,
    pub updated_at: i64,
    pub image_version: String,
    pub image_agent_version: String,
    pub image_manifest_digest: String,
    pub current_image_id: Option<String>,
    pub last_heartbeat_at: Option<i64>,
    pub unhealthy_since: Option<i64>,
    /// The Agent this one's slice was copied from.
    pub cloned_from: Option<String>,
    /// The clone being made of this Agent (its operations wait for it).
    pub cloning_to: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RawAgent {
    id: String,
    account_id: String,
    name: String,
    provider: String,
    provider_id: Option<String>,
    image_id: String,
    image_ref: String,
    env: String,
    state: String,
    operation: Option<String>,
    last_error: Option<String>,
    provisioned_at: i64,
    destroyed_at: Option<i64>,
    updated_at: i64,
    image_version: String,
    image_agent_version: String,
    image_manifest_digest: String,
    current_image_id: Option<String>,
    last_heartbeat_at: Option<i64>,
    unhealthy_since: Option<i64>,
    cloned_from: Option<String>,
    cloning_to: Option<String>,
}

impl TryFrom<RawAgent> for AgentRow {
    type Error = StoreError;
    fn try_from(raw: RawAgent) -> Result<Self> {
        Ok(Self {
            state: PeriodState::from_db(&raw.state)?,
            operation: raw
                .operation
                .as_deref()
                .map(AgentOperation::from_db)
                .transpose()?,
            id: raw.id,
            account_id: raw.account_id,
            name: raw.name,
            provider: raw.provider,
            provider_id: raw.provider_id,
            image_id: raw.image_id,
            image_ref: raw.image_ref,
            env: raw.env,
            last_error: raw.last_error,
            provisioned_at: raw.provisioned_at,
            destroyed_at: raw.destroyed_at,
            updated_at: raw.updated_at,
            image_version: raw.image_version,
            image_agent_version: raw.image_agent_version,
            image_manifest_digest: raw.image_manifest_digest,
            current_image_id: raw.current_image_id,
            last_heartbeat_at: raw.last_heartbeat_at,
            unhealthy_since: raw.unhealthy_since,
            cloned_from: raw.cloned_from,
            cloning_to: raw.cloning_to,
        })
    }
}

/// A new Agent, paused until its VM is seen running, with its provisioning under way.
#[derive(Clone, Debug)]
pub struct NewAgent<'a> {
    pub id: &'a str,
    pub account_id: &'a str,
    pub name: &'a str,
    pub provider: &'a str,
    pub image_id: &'a str,
    pub image_ref: &'a str,
    pub env: &'a str,
    pub provisioned_at: i64,
    /// The Agent a clone's slice is copied from.
    pub cloned_from: Option<&'a str>,
}

/// How an operation ended, as the provider confirmed it.
#[derive(Clone, Debug, Default)]
pub struct OperationOutcome<'a> {
    pub provider_id: Option<&'a str>,
    pub state: Option<PeriodState>,
    pub error: Option<&'a str>,
}

impl Tx {
    pub async fn insert_agent(&mut self, agent: &NewAgent<'_>) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO agents (id, account_id, name, provider, provider_id, image_id, image_ref,
                                 env, state, operation, last_error, provisioned_at, destroyed_at,
                                 updated_at, cloned_from)
             VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, 'paused', 'provision', NULL, $8, NULL, $8,
                     $9)",
        )
        .bind(agent.id)
        .bind(agent.account_id)
        .bind(agent.name)
        .bind(agent.provider)
        .bind(agent.image_id)
        .bind(agent.image_ref)
        .bind(agent.env)
        .bind(agent.provisioned_at)
        .bind(agent.cloned_from)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Records an Agent that already runs at its provider (an import): its server known, its
    /// state as the provider reported it, no operation under way.
    pub async fn insert_imported_agent(
        &mut self,
        agent: &NewAgent<'_>,
        provider_id: &str,
        state: PeriodState,
    ) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO agents (id, account_id, name, provider, provider_id, image_id, image_ref,
                                 env, state, operation, last_error, provisioned_at, destroyed_at,
                                 updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10, NULL, $10)",
        )
        .bind(agent.id)
        .bind(agent.account_id)
        .bind(agent.name)
        .bind(agent.provider)
        .bind(provider_id)
        .bind(agent.image_id)
        .bind(agent.image_ref)
        .bind(agent.env)
        .bind(state.as_db())
        .bind(agent.provisioned_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// The live Agent whose server at `provider` is `provider_id`, if any.
    pub async fn live_agent_at(
        &mut self,
        provider: &str,
        provider_id: &str,
    ) -> Result<Option<String>> {
        let found: Option<(String,)> = on_conn!(self, conn => sqlx::query_as(
            "SELECT id FROM agents WHERE provider = $1 AND provider_id = $2 AND destroyed_at IS NULL",
        )
        .bind(provider)
        .bind(provider_id)
        .fetch_optional(conn)
        .await)?;
        Ok(found.map(|(id,)| id))
    }

    pub async fn agent(&mut self, id: &str) -> Result<Option<AgentRow>> {
        let raw: Option<RawAgent> = on_conn!(self, conn => sqlx::query_as(
            concat!(agent_select!(), " WHERE a.id = $1"),
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?;
        raw.map(AgentRow::try_from).transpose()
    }

    /// A page of Agents ordered by id, optionally of one account only.
    pub async fn agents(
        &mut self,
        account_id: Option<&str>,
        after_id: Option<&str>,
        include_destroyed: bool,
        limit: i64,
    ) -> Result<Vec<AgentRow>> {
        let raws: Vec<RawAgent> = on_conn!(self, conn => sqlx::query_as(concat!(
            agent_select!(),
            " WHERE a.account_id = COALESCE($1, a.account_id)
                AND a.id > COALESCE($2, '')
                AND ($3 OR a.destroyed_at IS NULL)
              ORDER BY a.id
              LIMIT $4"
        ))
        .bind(account_id)
        .bind(after_id)
        .bind(include_destroyed)
        .bind(limit)
        .fetch_all(conn)
        .await)?;
        raws.into_iter().map(AgentRow::try_from).collect()
    }

    /// Marks `operation` as under way if the Agent (of `account_id`, when given) is in a state
    /// that allows it and nothing else is under way. Returns false, changing nothing, otherwise.
    pub async fn begin_operation(
        &mut self,
        id: &str,
        account_id: Option<&str>,
        operation: AgentOperation,
        now: i64,
    ) -> Result<bool> {
        let sql = match operation {
            AgentOperation::Start => {
                begin_operation!("start", " AND provider_id IS NOT NULL AND state = 'paused'")
            }
            AgentOperation::Stop => {
                begin_operation!("stop", " AND provider_id IS NOT NULL AND state = 'running'")
            }
            AgentOperation::Destroy => begin_operation!("destroy", ""),
            AgentOperation::Provision => {
                return Err(StoreError::Corrupt(
                    "provisioning begins with insert_agent".to_owned(),
                ));
            }
        };
        let result = on_conn!(self, conn => sqlx::query(sql)
            .bind(id)
            .bind(now)
            .bind(account_id)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Marks a clone `clone_id` as being made of the Agent `id` (of `account_id`, when given),
    /// if it is live, has a VM, is recorded `state`, and nothing is under way on it: the
    /// compare-and-set that holds its start, stop, destroy and other clones until the clone is
    /// made. Returns false, changing nothing, otherwise.
    pub async fn begin_cloning(
        &mut self,
        id: &str,
        account_id: Option<&str>,
        state: PeriodState,
        clone_id: &str,
        now: i64,
    ) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET cloning_to = $4, updated_at = $2
             WHERE id = $1 AND account_id = COALESCE($3, account_id)
               AND destroyed_at IS NULL AND operation IS NULL AND cloning_to IS NULL
               AND provider_id IS NOT NULL AND state = $5",
        )
        .bind(id)
        .bind(now)
        .bind(account_id)
        .bind(clone_id)
        .bind(state.as_db())
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Ends the making of clone `clone_id` of the Agent `id`. Returns false if it was ended
    /// already.
    pub async fn end_cloning(&mut self, id: &str, clone_id: &str, now: i64) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET cloning_to = NULL, updated_at = $3 WHERE id = $1 AND cloning_to = $2",
        )
        .bind(id)
        .bind(clone_id)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Ends `operation` with what the provider confirmed. Returns false if that operation was
    /// not the one under way (another worker finished it already).
    pub async fn finish_operation(
        &mut self,
        id: &str,
        operation: AgentOperation,
        outcome: &OperationOutcome<'_>,
        now: i64,
    ) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE agents
             SET operation = NULL,
                 last_error = $3,
                 provider_id = COALESCE($4, provider_id),
                 state = COALESCE($5, state),
                 updated_at = $6
             WHERE id = $1 AND operation = $2",
        )
        .bind(id)
        .bind(operation.as_db())
        .bind(outcome.error)
        .bind(outcome.provider_id)
        .bind(outcome.state.map(DbText::as_db))
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Ends the Agent's lifetime at `at`.
    pub async fn mark_destroyed(&mut self, id: &str, at: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET destroyed_at = $2, updated_at = $2 WHERE id = $1 AND destroyed_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Moves a live Agent from `from` to `to`. Returns false if it is not a live Agent of `from`.
    pub async fn reassign_agent(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET account_id = $3, updated_at = $4
             WHERE id = $1 AND account_id = $2 AND destroyed_at IS NULL",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }
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

/// A page of lifecycle changes: the row value `(updated_at, id) > ($1, $2)` lets the database
/// start the page at its position in `agents_by_update_and_id` (migration 0010).
///
/// A macro rather than a constant so that `EXPLAIN` can be put before it at compile time.
macro_rules! agents_changed_since {
    () => {
        "SELECT id, account_id, state, operation, destroyed_at, updated_at
         FROM agents WHERE (updated_at, id) > ($1, $2)
         ORDER BY updated_at, id LIMIT $3"
    };
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
    /// Lifecycle changes after the position `after` (`updated_at`, then id: strictly), oldest
    /// first; the last one's position is the next page's `after`.
    pub async fn agents_changed_since(
        &mut self,
        after: (i64, &str),
        limit: i64,
    ) -> Result<Vec<AgentChange>> {
        Ok(
            on_conn!(self, conn => sqlx::query_as(agents_changed_since!())
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(conn)
            .await)?,
        )
    }

    /// Whether the database can start [`Tx::agents_changed_since`]'s page at its position in
    /// the index: the query's plan, one line per row of `EXPLAIN`, for a test. On PostgreSQL
    /// the plan is made with sequential scans switched off (a test's table is small enough for
    /// one to win), so it shows whether the index can serve the page, not what a large table
    /// would get; the setting is reset afterwards.
    #[doc(hidden)]
    pub async fn plan_of_agents_changed_since(&mut self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = match &mut self.inner {
            super::TxInner::Sqlite(conn) => {
                // EXPLAIN QUERY PLAN's rows are (id, parent, notused, detail).
                let plan: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", agents_changed_since!()))
                        .bind(0_i64)
                        .bind("")
                        .bind(1_i64)
                        .fetch_all(&mut **conn)
                        .await?;
                plan.into_iter().map(|(.., detail)| (detail,)).collect()
            }
            super::TxInner::Postgres(conn) => {
                sqlx::query("SET LOCAL enable_seqscan = off")
                    .execute(&mut **conn)
                    .await?;
                let plan = sqlx::query_as(concat!("EXPLAIN ", agents_changed_since!()))
                    .bind(0_i64)
                    .bind("")
                    .bind(1_i64)
                    .fetch_all(&mut **conn)
                    .await;
                sqlx::query("RESET enable_seqscan")
                    .execute(&mut **conn)
                    .await?;
                plan?
            }
        };
        Ok(rows.into_iter().map(|(line,)| line).collect())
    }

    pub async fn agent_change(&mut self, id: &str) -> Result<Option<AgentChange>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, account_id, state, operation, destroyed_at, updated_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Records the Agent's observed state (a heartbeat, the reconciler): the compare-and-set
    /// on its row. Only a live Agent with a VM, recorded `from`, with no operation under way,
    /// changes.
    pub async fn observe_state(
        &mut self,
        id: &str,
        from: PeriodState,
        to: PeriodState,
        now: i64,
    ) -> Result<bool> {
        let changed = on_conn!(self, conn => sqlx::query(
            "UPDATE agents SET state = $3, updated_at = $4
             WHERE id = $1 AND state = $2 AND operation IS NULL AND destroyed_at IS NULL
               AND provider_id IS NOT NULL",
        )
        .bind(id)
        .bind(from.as_db())
        .bind(to.as_db())
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(changed == 1)
    }

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
