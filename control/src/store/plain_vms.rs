//! Plain VMs: the row every lifecycle change of one locks first.

use control_api::agents::{AgentOperation, PeriodState};

use super::{DbText, Result, StoreError, Tx, on_conn};

/// `SELECT` of every column, for the `WHERE` that follows.
macro_rules! plain_vm_select {
    () => {
        "SELECT id, account_id, name, hostname, provider, server_type, location, image,
                default_user, ssh_keys, one_time_password, password_replica, server_id,
                firewall_id, ipv4, ipv6, state, operation, last_error, provisioned_at,
                destroyed_at, updated_at
         FROM plain_vms "
    };
}

/// Which operation a compare-and-set may begin, and on which states.
macro_rules! begin_plain_vm_operation {
    ($op:literal, $condition:literal) => {
        concat!(
            "UPDATE plain_vms SET operation = '",
            $op,
            "', last_error = NULL, updated_at = $2
             WHERE id = $1 AND account_id = COALESCE($3, account_id)
               AND destroyed_at IS NULL AND operation IS NULL",
            $condition
        )
    };
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainVmRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub hostname: String,
    pub provider: String,
    pub server_type: String,
    pub location: String,
    pub image: String,
    pub default_user: String,
    /// JSON array of the keys it was given (`PlainVmKey`s).
    pub ssh_keys: String,
    pub one_time_password: bool,
    /// The replica holding the password's hash in memory until the server is made.
    pub password_replica: Option<String>,
    pub server_id: Option<String>,
    pub firewall_id: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub state: PeriodState,
    pub operation: Option<AgentOperation>,
    pub last_error: Option<String>,
    pub provisioned_at: i64,
    pub destroyed_at: Option<i64>,
    pub updated_at: i64,
}

#[derive(sqlx::FromRow)]
struct RawPlainVm {
    id: String,
    account_id: String,
    name: String,
    hostname: String,
    provider: String,
    server_type: String,
    location: String,
    image: String,
    default_user: String,
    ssh_keys: String,
    one_time_password: bool,
    password_replica: Option<String>,
    server_id: Option<String>,
    firewall_id: Option<String>,
    ipv4: Option<String>,
    ipv6: Option<String>,
    state: String,
    operation: Option<String>,
    last_error: Option<String>,
    provisioned_at: i64,
    destroyed_at: Option<i64>,
    updated_at: i64,
}

impl TryFrom<RawPlainVm> for PlainVmRow {
    type Error = StoreError;
    fn try_from(raw: RawPlainVm) -> Result<Self> {
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
            hostname: raw.hostname,
            provider: raw.provider,
            server_type: raw.server_type,
            location: raw.location,
            image: raw.image,
            default_user: raw.default_user,
            ssh_keys: raw.ssh_keys,
            one_time_password: raw.one_time_password,
            password_replica: raw.password_replica,
            server_id: raw.server_id,
            firewall_id: raw.firewall_id,
            ipv4: raw.ipv4,
            ipv6: raw.ipv6,
            last_error: raw.last_error,
            provisioned_at: raw.provisioned_at,
            destroyed_at: raw.destroyed_at,
            updated_at: raw.updated_at,
        })
    }
}

/// How a Plain VM's operation ended, as the provider confirmed it (or why it failed).
#[derive(Clone, Debug, Default)]
pub struct PlainVmOutcome<'a> {
    pub server_id: Option<&'a str>,
    pub firewall_id: Option<&'a str>,
    pub ipv4: Option<&'a str>,
    pub ipv6: Option<&'a str>,
    pub state: Option<PeriodState>,
    pub error: Option<&'a str>,
}

impl Tx {
    /// Records a new Plain VM, stopped until its server is seen running, its provisioning
    /// under way. `row`'s state, operation, provider ids and error are not read.
    pub async fn insert_plain_vm(&mut self, row: &PlainVmRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO plain_vms (id, account_id, name, hostname, provider, server_type,
                                    location, image, default_user, ssh_keys, one_time_password,
                                    password_replica, server_id, firewall_id, ipv4, ipv6, state,
                                    operation, last_error, provisioned_at, destroyed_at,
                                    updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL, NULL, NULL,
                     'paused', 'provision', NULL, $13, NULL, $13)",
        )
        .bind(&row.id)
        .bind(&row.account_id)
        .bind(&row.name)
        .bind(&row.hostname)
        .bind(&row.provider)
        .bind(&row.server_type)
        .bind(&row.location)
        .bind(&row.image)
        .bind(&row.default_user)
        .bind(&row.ssh_keys)
        .bind(row.one_time_password)
        .bind(&row.password_replica)
        .bind(row.provisioned_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn plain_vm(&mut self, id: &str) -> Result<Option<PlainVmRow>> {
        let raw: Option<RawPlainVm> = on_conn!(self, conn => sqlx::query_as(
            concat!(plain_vm_select!(), "WHERE id = $1"),
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?;
        raw.map(PlainVmRow::try_from).transpose()
    }

    /// A page of Plain VMs ordered by id, optionally of one account only.
    pub async fn plain_vms(
        &mut self,
        account_id: Option<&str>,
        after_id: Option<&str>,
        include_destroyed: bool,
        limit: i64,
    ) -> Result<Vec<PlainVmRow>> {
        let raws: Vec<RawPlainVm> = on_conn!(self, conn => sqlx::query_as(concat!(
            plain_vm_select!(),
            "WHERE account_id = COALESCE($1, account_id)
               AND id > COALESCE($2, '')
               AND ($3 OR destroyed_at IS NULL)
             ORDER BY id
             LIMIT $4"
        ))
        .bind(account_id)
        .bind(after_id)
        .bind(include_destroyed)
        .bind(limit)
        .fetch_all(conn)
        .await)?;
        raws.into_iter().map(PlainVmRow::try_from).collect()
    }

    /// Marks `operation` as under way if the Plain VM (of `account_id`, when given) is in a
    /// state that allows it and nothing else is under way. Returns false, changing nothing,
    /// otherwise.
    pub async fn begin_plain_vm_operation(
        &mut self,
        id: &str,
        account_id: Option<&str>,
        operation: AgentOperation,
        now: i64,
    ) -> Result<bool> {
        let sql = match operation {
            AgentOperation::Start => begin_plain_vm_operation!(
                "start",
                " AND server_id IS NOT NULL AND state = 'paused'"
            ),
            AgentOperation::Stop => begin_plain_vm_operation!(
                "stop",
                " AND server_id IS NOT NULL AND state = 'running'"
            ),
            AgentOperation::Destroy => begin_plain_vm_operation!("destroy", ""),
            AgentOperation::Provision => {
                return Err(StoreError::Corrupt(
                    "provisioning begins with insert_plain_vm".to_owned(),
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

    /// Ends `operation` with what the provider confirmed, or with its error. Returns false if
    /// that operation was not the one under way (another worker finished it already). Once the
    /// server exists no replica needs the password's hash: its holder is forgotten.
    pub async fn finish_plain_vm_operation(
        &mut self,
        id: &str,
        operation: AgentOperation,
        outcome: &PlainVmOutcome<'_>,
        now: i64,
    ) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE plain_vms
             SET operation = NULL,
                 last_error = $3,
                 server_id = COALESCE($4, server_id),
                 firewall_id = COALESCE($5, firewall_id),
                 ipv4 = COALESCE($6, ipv4),
                 ipv6 = COALESCE($7, ipv6),
                 state = COALESCE($8, state),
                 password_replica = CASE WHEN $4 IS NULL THEN password_replica END,
                 updated_at = $9
             WHERE id = $1 AND operation = $2",
        )
        .bind(id)
        .bind(operation.as_db())
        .bind(outcome.error)
        .bind(outcome.server_id)
        .bind(outcome.firewall_id)
        .bind(outcome.ipv4)
        .bind(outcome.ipv6)
        .bind(outcome.state.map(DbText::as_db))
        .bind(now)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(result == 1)
    }

    /// Ends the Plain VM's lifetime at `at`.
    pub async fn mark_plain_vm_destroyed(&mut self, id: &str, at: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "UPDATE plain_vms SET destroyed_at = $2, password_replica = NULL, updated_at = $2
             WHERE id = $1 AND destroyed_at IS NULL",
        )
        .bind(id)
        .bind(at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Records the VM's observed state (the reconciler): the compare-and-set on its row. Only
    /// a live VM with a server, recorded `from`, with no operation under way, changes.
    pub async fn observe_plain_vm_state(
        &mut self,
        id: &str,
        from: PeriodState,
        to: PeriodState,
        now: i64,
    ) -> Result<bool> {
        let changed = on_conn!(self, conn => sqlx::query(
            "UPDATE plain_vms SET state = $3, updated_at = $4
             WHERE id = $1 AND state = $2 AND operation IS NULL AND destroyed_at IS NULL
               AND server_id IS NOT NULL",
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

    /// Live Plain VMs with a server and no operation under way, as the reconciler compares
    /// them (`provider_id` is the server).
    pub async fn reconcilable_plain_vms(&mut self) -> Result<Vec<super::ReconcileRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, account_id, provider, server_id AS provider_id, state FROM plain_vms
             WHERE destroyed_at IS NULL AND operation IS NULL AND server_id IS NOT NULL
             ORDER BY id",
        )
        .fetch_all(conn)
        .await)?)
    }

    /// Moves a live Plain VM from `from` to `to`. Returns false if it is not a live Plain VM
    /// of `from`.
    pub async fn reassign_plain_vm(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool> {
        let result = on_conn!(self, conn => sqlx::query(
            "UPDATE plain_vms SET account_id = $3, updated_at = $4
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
