//! Shared test setup: a fresh database per test on both backends, and the workspace's binaries.
//! [`ledger`] checks the ledger invariants on what a test read, by arithmetic of its own;
//! [`tls`] makes a throwaway CA and server certificates.
//!
//! PostgreSQL comes from, in order: `CONTROL_TEST_POSTGRES_URL` (a server where the tests may
//! create databases, as in CI); else a throwaway cluster this process starts with the
//! installed `initdb`/`pg_ctl` on a temp dir and a free port, and that a watcher stops when the
//! process ends; else nowhere, and every PostgreSQL test is skipped with a loud notice on
//! stderr. `CONTROL_TEST_STRICT=1` turns every such skip into a failure (CI sets it).
//!
//! Each test gets its own database (a temp SQLite file, or a new PostgreSQL database dropped
//! when the test ends), so tests run in parallel without seeing each other.

#![allow(clippy::disallowed_methods)] // this crate is where tests read their environment
#![allow(clippy::expect_used)] // test setup: a failure to set up is a failed test, said loudly

mod daemon;
pub mod ledger;
mod postgres;
pub mod tls;

pub use daemon::Daemon;
pub use postgres::{OwnCluster, PostgresServer, postgres_server};

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Set to `1` to fail, rather than skip, tests whose prerequisites are missing.
pub const STRICT_ENV: &str = "CONTROL_TEST_STRICT";
/// A PostgreSQL URL whose user may `CREATE DATABASE`.
pub const POSTGRES_URL_ENV: &str = "CONTROL_TEST_POSTGRES_URL";

/// Which engine a test database runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    /// What `control --database` takes.
    pub url: String,
    /// The SQLite file, for tests that open it with other tools.
    pub sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A test database on `backend`, or `None` (announced loudly) when PostgreSQL is missing.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A fresh SQLite database file in a temp dir.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let path = dir.path().join("control.db");
        Self {
            backend: Backend::Sqlite,
            url: format!("sqlite://{}", path.display()),
            sqlite_path: Some(path),
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` when no server is to be had.
    pub async fn postgres() -> Option<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let server = postgres_server()?;
        let name = format!(
            "ctl_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = PgConnection::connect(&server.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to test PostgreSQL {}: {e}", server.admin_url));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        admin.close().await.ok();
        Some(Self {
            backend: Backend::Postgres,
            url: with_database(&server.admin_url, &name),
            sqlite_path: None,
            _dir: None,
            postgres: Some((server.admin_url.clone(), name)),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime; use a thread with its own to stay out of its way.
        let dropped = std::thread::spawn(move || drop_database(&admin_url, &name)).join();
        if let Ok(Err(e)) = dropped {
            eprintln!("test-support: could not drop a test database: {e}");
        }
    }
}

fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
        admin.close().await.ok();
        Ok(())
    })
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Says loudly, past the test harness's output capture, that something was skipped; under
/// `CONTROL_TEST_STRICT=1` fails instead.
pub fn skip(what: &str) {
    static ANNOUNCED: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    assert!(
        std::env::var(STRICT_ENV).as_deref() != Ok("1"),
        "{STRICT_ENV}=1 and a test prerequisite is missing: {what}"
    );
    let announced = ANNOUNCED.get_or_init(Default::default);
    let mut announced = announced
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if announced.iter().any(|a| a == what) {
        return;
    }
    announced.push(what.to_owned());
    let bar = "=".repeat(78);
    // Written to the real stderr: libtest captures print!/eprint!, not direct writes.
    let _ = writeln!(std::io::stderr(), "\n{bar}\nSKIPPED: {what}\n{bar}\n");
}

/// An HTTP client for tests. reqwest is built workspace-wide with rustls but without a built-in
/// crypto provider (vm-agent installs ring itself), so every client needs a process default
/// first: this installs ring once and builds the client.
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("building an HTTP client")
}

/// [`http_client`]'s builder, for a test that sets timeouts of its own.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A TCP port free on 127.0.0.1 at the time of asking, from outside the kernel's ephemeral
/// range (see [`outside_ephemeral_range`]).
///
/// Not one the kernel hands out for port 0: between this answer and the daemon's bind, a fake
/// or another test binding port 0 could be given the same port, and the daemon's caller would
/// then find someone else's listener open (seen in CI: a control "listening" whose data dir
/// had no operator token yet). Ports outside the ephemeral range are only ever taken by name.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (lowest, below) = outside_ephemeral_range();
    let span = below - lowest;
    // Test processes run side by side: each walks the range from its own place.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = lowest + (start + n.wrapping_mul(7_919)) % span;
        let port = u16::try_from(port).expect("a port fits in u16");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 between {lowest} and {below}");
}

/// Ports `[lowest, below)` the kernel never hands out for port 0: from 10000 up to
/// `net.ipv4.ip_local_port_range` (Linux's default range when unreadable), or above it when
/// it starts too low to leave a thousand ports there.
fn outside_ephemeral_range() -> (u32, u32) {
    const LOWEST: u32 = 10_000;
    const ENOUGH: u32 = 1_000;
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|range| {
            range
                .split_whitespace()
                .filter_map(|port| port.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (first, last) = match range[..] {
        [first, last] => (first, last),
        _ => (32_768, 60_999),
    };
    if first >= LOWEST + ENOUGH {
        (LOWEST, first)
    } else if last + ENOUGH < u32::from(u16::MAX) {
        (last + 1, u32::from(u16::MAX) + 1)
    } else {
        panic!(
            "the kernel's ephemeral port range ({first}-{last}) leaves no room for test ports outside it"
        );
    }
}

/// A binary of this workspace built by the same `cargo test` run, found next to the test
/// executable (`target/<profile>/`), or next to the program asking (the soak, itself in
/// `target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    let beside = exe.parent().map(|dir| dir.join(name));
    if let Some(bin) = beside.filter(|bin| bin.is_file() && exe.file_name() != bin.file_name()) {
        return bin;
    }
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built; run the tests with `cargo test --workspace` (which builds it)",
        bin.display()
    );
    bin
}

/// Whether a program is on PATH; announces a skip if not.
pub fn have_program(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(&format!(
            "`{program}` is not installed; the tests that drive it did not run"
        ));
    }
    found
}

/// Declares each listed `async fn name(db: TestDb)` as two tests, `sqlite::name` and
/// `postgres::name`, so one test story runs on both backends.
#[macro_export]
macro_rules! dual_backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::TestDb::postgres().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

/// How many cases each property test runs: `PROPTEST_CASES`, or `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_names_are_swapped_in_urls() {
        assert_eq!(
            with_database("postgres://u@h:5/test", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
