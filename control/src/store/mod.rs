//! Storage: one interface over SQLite (the embedded default) and PostgreSQL (several replicas).
//!
//! Every query is written once. sqlx accepts `$N` placeholders on both backends and the
//! [`on_conn!`] macro runs a query body on whichever connection a transaction holds, so the
//! dialect differences live in this file alone: how a write transaction begins, which
//! migrations run, and how driver errors are classified. Queries never concatenate input into
//! SQL: sqlx only takes `&'static str` text here.
//!
//! Concurrency rule for every writer: change the row you depend on first (a compare-and-set
//! `UPDATE … WHERE … RETURNING`), read afterwards. On PostgreSQL that takes the row lock before
//! any decision is made, on SQLite the write transaction is already exclusive, so neither
//! backend needs `SELECT … FOR UPDATE`.

mod accounts;
mod agents;
mod audit;
mod bootstrap;
mod credentials;
mod idempotency;
mod images;
mod jobs;
mod leases;
mod liveness;
mod periods;
mod plain_vms;
mod replicas;
mod text;
mod usage;
mod vault_keys;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Column, Postgres, Row, Sqlite, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use accounts::{AccountRow, TokenRow};
pub use agents::{AgentChange, AgentRow, NewAgent, OperationOutcome, ReconcileRow};
pub use audit::{AuditFilter, AuditRow, CheckpointRow};
pub use bootstrap::BootstrapRow;
pub use credentials::{CredentialRow, LiveCredentialRow};
pub use idempotency::IdempotencyClaim;
pub use images::ImageRow;
pub use jobs::{JobRow, NewJob};
pub use liveness::{LIVENESS_BATCH, LivenessRow};
pub use periods::{PeriodRow, ResourceRef};
pub use plain_vms::{PlainVmOutcome, PlainVmRow};
pub(crate) use text::DbText;
pub use usage::{RollupState, UsageRowRecord};
pub use vault_keys::VaultKeyRow;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which engine a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection settings that do not belong in the URL.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a SQLite writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            busy_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL `{0}` is neither sqlite:… nor postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot open database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying database migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unique constraint violated ({0})")]
    Conflict(String),
    /// The change lost a race that makes it moot; nothing was written.
    #[error("{0}")]
    Superseded(String),
    #[error("the database refused the change: {0}")]
    Refused(String),
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
    /// The audit chain's head and its events disagree (the head was rewound, or events were
    /// removed behind the database's back): nothing more is appended until an operator looks.
    #[error("the audit chain is damaged: {0}")]
    AuditChain(String),
    /// The database cannot be written or reached right now: a full or read-only disk, an I/O
    /// error, a lock held past the busy timeout, a server that went away or is shutting down.
    /// Nothing was written; the same request may succeed once the storage is back.
    #[error("storage unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
}

/// SQLite's primary result codes that say the storage, not the statement, failed: `BUSY` (5,
/// after the busy timeout), `READONLY` (8), `IOERR` (10), `FULL` (13), `CANTOPEN` (14).
const SQLITE_STORAGE_FAULTS: [i32; 5] = [5, 8, 10, 13, 14];

/// Whether `error` says the storage is unavailable rather than the request wrong: see
/// [`StoreError::Unavailable`]. PostgreSQL's SQLSTATE classes `08` (connection exception) and
/// `53` (insufficient resources, such as a full disk), `57P01`–`57P03` (the server is shutting
/// down, crashed or starting) and `25006` (a read-only standby) count, as do I/O errors, a
/// pool that timed out waiting for a connection, and a crashed SQLite worker.
pub fn is_storage_fault(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                code.parse::<i32>()
                    .is_ok_and(|extended| SQLITE_STORAGE_FAULTS.contains(&(extended & 0xff)))
            } else {
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "25006")
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_storage_fault(&error) {
            return Self::Unavailable(error);
        }
        if let sqlx::Error::Database(db) = &error {
            if db.is_unique_violation() {
                return Self::Conflict(db.constraint().unwrap_or(db.message()).to_owned());
            }
            // The audit and state-period triggers raise these ("…: DELETE refused"); SQLite
            // reports RAISE(ABORT) as a plain error.
            if db.message().contains("append-only") || db.message().ends_with(" refused") {
                return Self::Refused(db.message().to_owned());
            }
        }
        Self::Query(error)
    }
}

impl StoreError {
    /// Whether the database refused for lack of a privilege (PostgreSQL's 42501), as it does
    /// when a runtime role tries to migrate.
    pub fn is_permission_denied(&self) -> bool {
        let (Self::Migrate(
            sqlx::migrate::MigrateError::Execute(source)
            | sqlx::migrate::MigrateError::ExecuteMigration(source, _),
        )
        | Self::Query(source)) = self
        else {
            return false;
        };
        matches!(source, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
enum Pools {
    Sqlite {
        pool: SqlitePool,
        /// Queues this process's writers fairly instead of letting them spin on `SQLITE_BUSY`.
        write_gate: Arc<Mutex<()>>,
    },
    Postgres(PgPool),
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pools: Pools,
    faults: Arc<FaultMemory>,
}

/// The storage fault this process met last, kept until a write transaction commits again:
/// what `/readyz` reports. A write is the only proof that the storage took space back (a
/// full SQLite disk still answers reads and `SELECT 1`), and one comes every few seconds from
/// the replica's own announcement, so readiness returns within seconds of the storage.
#[derive(Default)]
struct FaultMemory(std::sync::Mutex<Option<String>>);

impl FaultMemory {
    fn note(&self, error: &StoreError) {
        if let StoreError::Unavailable(source) = error {
            let mut last = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none() {
                tracing::error!(error = %source, "storage unavailable");
            }
            *last = Some(source.to_string());
        }
    }

    fn clear(&self) {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.take().is_some() {
            tracing::info!("storage available again: a write committed");
        }
    }

    fn last(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

/// A database transaction; dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: TxInner,
    _write_gate: Option<OwnedMutexGuard<()>>,
    faults: Arc<FaultMemory>,
    /// Whether this is a write transaction, whose commit proves the storage writable.
    writes: bool,
    /// What must happen once the transaction's changes are visible to others, and only then.
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$conn` bound to the transaction's connection, whichever backend it is on.
/// The body is compiled once per backend; this is the only place the two meet.
macro_rules! on_conn {
    ($tx:expr, $conn:ident => $body:expr) => {
        match &mut $tx.inner {
            $crate::store::TxInner::Sqlite(transaction) => {
                let $conn: &mut sqlx::SqliteConnection = &mut **transaction;
                $body
            }
            $crate::store::TxInner::Postgres(transaction) => {
                let $conn: &mut sqlx::PgConnection = &mut **transaction;
                $body
            }
        }
    };
}
pub(crate) use on_conn;

/// The pool settings both backends share.
///
/// A connection whose transaction could not be closed never serves again. When SQLite fails a
/// `COMMIT` or a statement with a full disk or an I/O error, it rolls the transaction back by
/// itself; sqlx's own `ROLLBACK` then fails ("no transaction is active") and its count of open
/// transactions stays at one, so the next `BEGIN IMMEDIATE` on that connection would fail with
/// "`begin_with` at non-zero transaction depth" long after the disk has space again. By the time
/// a connection is acquired its release has round-tripped the worker (sqlx pings on release),
/// so the count is settled, and a connection that still counts a transaction is closed here
/// and replaced by a fresh one.
fn pool_options<DB: sqlx::Database>(options: &StoreOptions) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .before_acquire(|conn: &mut DB::Connection, _| {
            Box::pin(async move {
                use sqlx::Connection as _;
                let clean = !conn.is_in_transaction();
                if !clean {
                    tracing::warn!(
                        "closing a pooled database connection left inside a transaction"
                    );
                }
                Ok(clean)
            })
        })
}

/// A database URL without its password (in the user part or a `password=` parameter), fit
/// for logs and error messages.
pub fn redact_url(text: &str) -> String {
    if text.starts_with("sqlite:") {
        return text.to_owned();
    }
    let Ok(mut url) = url::Url::parse(text) else {
        return "<unparseable database URL>".to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("password") {
                "***".into()
            } else {
                v
            };
            (k.into_owned(), v.into_owned())
        })
        .collect();
    if !pairs.is_empty() {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl Store {
    /// Opens the database at `url` (`sqlite:PATH` or `postgres://…`). Does not migrate.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self> {
        let connect_error = |source| StoreError::Connect {
            url: redact_url(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(connect_error)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Every commit reaches the disk before it is answered: with `NORMAL`, a crash
                // of the machine (or a file system the kernel stops, as on an I/O error) could
                // take back commits the API had confirmed, ledger rows and audit events that a
                // signed checkpoint may already cover.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(options.busy_timeout);
            let pool = pool_options(options)
                .connect_with(connect)
                .await
                .map_err(connect_error)?;
            Ok(Self {
                pools: Pools::Sqlite {
                    pool,
                    write_gate: Arc::new(Mutex::new(())),
                },
                faults: Arc::default(),
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url).map_err(connect_error)?;
            let pool = pool_options(options)
                .connect_with(connect)
                .await
                .map_err(connect_error)?;
            Ok(Self {
                pools: Pools::Postgres(pool),
                faults: Arc::default(),
            })
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Applies the backend's pending migrations; refuses if an applied one was edited.
    pub async fn migrate(&self) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { pool, .. } => SQLITE_MIGRATIONS.run(pool).await?,
            Pools::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Applies the pending migrations up to and including `version` only: the schema an older
    /// release left behind, for upgrade tests and for staging an upgrade by hand.
    pub async fn migrate_to(&self, version: i64) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { pool, .. } => SQLITE_MIGRATIONS.run_to(version, pool).await?,
            Pools::Postgres(pool) => POSTGRES_MIGRATIONS.run_to(version, pool).await?,
        }
        Ok(())
    }

    /// Whether every migration this build knows has been applied.
    pub async fn is_migrated(&self) -> Result<bool> {
        const APPLIED: &str = "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE";
        let (migrator, applied): (&sqlx::migrate::Migrator, Option<i64>) = match &self.pools {
            Pools::Sqlite { pool, .. } => (
                &SQLITE_MIGRATIONS,
                sqlx::query_scalar(APPLIED)
                    .fetch_one(pool)
                    .await
                    .ok()
                    .flatten(),
            ),
            Pools::Postgres(pool) => (
                &POSTGRES_MIGRATIONS,
                sqlx::query_scalar(APPLIED)
                    .fetch_one(pool)
                    .await
                    .ok()
                    .flatten(),
            ),
        };
        let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        Ok(applied == Some(latest))
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// A transaction for reading: one consistent snapshot (SQLite's read transaction,
    /// PostgreSQL's REPEATABLE READ) that never blocks writers.
    pub async fn read(&self) -> Result<Tx> {
        let inner = match &self.pools {
            Pools::Sqlite { pool, .. } => {
                TxInner::Sqlite(pool.begin().await.map_err(self.noted())?)
            }
            Pools::Postgres(pool) => TxInner::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
                    .map_err(self.noted())?,
            ),
        };
        Ok(Tx::new(inner, None, Arc::clone(&self.faults), false))
    }

    /// A transaction for writing. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so a read-then-write transaction can never fail half-way with `SQLITE_BUSY`.
    pub async fn write(&self) -> Result<Tx> {
        let (inner, gate) = match &self.pools {
            Pools::Sqlite { pool, write_gate } => {
                let gate = Arc::clone(write_gate).lock_owned().await;
                let tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(self.noted())?;
                (TxInner::Sqlite(tx), Some(gate))
            }
            Pools::Postgres(pool) => (
                TxInner::Postgres(pool.begin().await.map_err(self.noted())?),
                None,
            ),
        };
        Ok(Tx::new(inner, gate, Arc::clone(&self.faults), true))
    }

    /// Converts a driver error, remembering it when it says the storage is unavailable.
    fn noted(&self) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
        |error| {
            let error = StoreError::from(error);
            self.faults.note(&error);
            error
        }
    }

    /// The storage fault met last, unless a write has committed since: why this replica
    /// should not take traffic (see `FaultMemory`).
    pub fn storage_fault(&self) -> Option<String> {
        self.faults.last()
    }

    /// Round-trips a trivial query.
    pub async fn ping(&self) -> Result<()> {
        match &self.pools {
            Pools::Sqlite { pool, .. } => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
            Pools::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()),
        }
        .map_err(self.noted())?;
        Ok(())
    }

    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { pool, .. } => pool.close().await,
            Pools::Postgres(pool) => pool.close().await,
        }
    }

    /// Every row of every table, as text, in a stable order: lets tests and support compare
    /// the whole database before and after an operation that must change nothing.
    pub async fn snapshot(&self) -> Result<String> {
        const TABLES: [&str; 19] = [
            "SELECT * FROM accounts ORDER BY id",
            "SELECT * FROM api_tokens ORDER BY id",
            "SELECT * FROM images ORDER BY id",
            "SELECT * FROM current_image",
            "SELECT * FROM agents ORDER BY id",
            "SELECT * FROM state_periods ORDER BY id",
            "SELECT * FROM usage_daily ORDER BY day, resource_id, account_id",
            "SELECT * FROM usage_rollup",
            "SELECT * FROM audit_events ORDER BY seq",
            "SELECT * FROM audit_head",
            "SELECT * FROM audit_checkpoints ORDER BY seq",
            "SELECT * FROM jobs ORDER BY id",
            "SELECT * FROM idempotency_keys ORDER BY principal, idem_key",
            "SELECT * FROM agent_bootstrap ORDER BY agent_id",
            "SELECT * FROM agent_credentials ORDER BY id",
            "SELECT * FROM agent_liveness ORDER BY agent_id",
            "SELECT * FROM replicas ORDER BY id",
            "SELECT * FROM leases ORDER BY name",
            "SELECT version, checksum FROM _sqlx_migrations ORDER BY version",
        ];
        let mut out = String::new();
        let mut tx = self.read().await?;
        for sql in TABLES {
            out.push_str(sql);
            out.push('\n');
            on_conn!(tx, conn => {
                for row in sqlx::query(sql).fetch_all(&mut *conn).await? {
                    out.push_str(&render_row(&row));
                    out.push('\n');
                }
            });
        }
        Ok(out)
    }
}

/// Renders a row for [`Store::snapshot`] without knowing its types: each value is tried as an
/// integer, then as text, then as bytes.
fn render_row<R: Row>(row: &R) -> String
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let mut cells = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let value = if let Ok(v) = row.try_get::<Option<i64>, _>(index) {
            format!("{v:?}")
        } else if let Ok(v) = row.try_get::<Option<String>, _>(index) {
            format!("{v:?}")
        } else if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(index) {
            format!("{v:?}")
        } else {
            "<unreadable>".to_owned()
        };
        cells.push(format!("{}={value}", column.name()));
    }
    cells.join(" ")
}

impl Tx {
    fn new(
        inner: TxInner,
        write_gate: Option<OwnedMutexGuard<()>>,
        faults: Arc<FaultMemory>,
        writes: bool,
    ) -> Self {
        Self {
            inner,
            _write_gate: write_gate,
            faults,
            writes,
            after_commit: Vec::new(),
        }
    }

    /// Runs `hook` once this transaction has committed (never if it rolls back), such as
    /// dropping a cache entry the transaction made stale: before the commit, a concurrent
    /// reader would only cache the old row again.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(hook));
    }

    pub async fn commit(self) -> Result<()> {
        let committed = match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Postgres(tx) => tx.commit().await,
        };
        if let Err(error) = committed {
            let error = StoreError::from(error);
            self.faults.note(&error);
            return Err(error);
        }
        if self.writes {
            self.faults.clear();
        }
        for hook in self.after_commit {
            hook();
        }
        Ok(())
    }
}

impl Tx {
    /// Runs one statement fixed at compile time, outside the typed queries: for diagnostics and
    /// for tests that play an intruder with direct database access. Never given input.
    pub async fn execute_raw(&mut self, sql: &'static str) -> Result<u64> {
        Ok(on_conn!(self, conn => sqlx::query(sql)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?)
    }
}

#[cfg(test)]
mod tests {
    use super::{StoreError, is_storage_fault, redact_url};

    /// A write SQLite refuses as read-only is a storage fault (503), a broken constraint is not.
    #[tokio::test]
    async fn read_only_storage_is_unavailable_and_a_conflict_is_not() {
        use sqlx::Connection as _;
        use sqlx::sqlite::SqliteConnection;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("t.db").display());
        let mut rw = SqliteConnection::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut rw)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut rw)
            .await
            .unwrap();
        let conflict = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut rw)
            .await
            .unwrap_err();
        assert!(!is_storage_fault(&conflict));
        assert!(matches!(
            StoreError::from(conflict),
            StoreError::Conflict(_)
        ));
        let mut ro = SqliteConnection::connect(&format!("{url}?mode=ro"))
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut ro)
            .await
            .unwrap_err();
        assert!(is_storage_fault(&refused), "{refused}");
        assert!(matches!(
            StoreError::from(refused),
            StoreError::Unavailable(_)
        ));
        assert!(is_storage_fault(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn passwords_never_leave_in_urls() {
        assert_eq!(
            redact_url("postgres://ctl:s3cret@db:5432/control"),
            "postgres://ctl:***@db:5432/control"
        );
        assert_eq!(
            redact_url("postgres://ctl@db/control"),
            "postgres://ctl@db/control"
        );
        assert_eq!(
            redact_url("sqlite:/var/lib/control/control.db"),
            "sqlite:/var/lib/control/control.db"
        );
    }
}
