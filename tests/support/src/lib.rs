//! Shared test setup: a fresh database per test on both backends, and the workspace's binaries.
//! [`ledger`] checks the ledger invariants on what a test read, by arithmetic of its own.
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

pub mod ledger;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

/// A PostgreSQL server the tests may create databases on.
#[derive(Debug)]
pub struct PostgresServer {
    pub admin_url: String,
    /// How it was found, for messages.
    pub source: String,
}

/// The server for this test process, found or started once; `None` (announced) if there is none.
pub fn postgres_server() -> Option<&'static PostgresServer> {
    static SERVER: OnceLock<Option<PostgresServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| match find_or_start_postgres() {
            Ok(server) => {
                cleanup_stale_databases(&server.admin_url);
                Some(server)
            }
            Err(why) => {
                skip(&format!("PostgreSQL tests: {why}"));
                None
            }
        })
        .as_ref()
}

fn find_or_start_postgres() -> Result<PostgresServer, String> {
    if let Some(url) = std::env::var(POSTGRES_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Ok(PostgresServer {
            admin_url: url,
            source: POSTGRES_URL_ENV.to_owned(),
        });
    }
    let bin = postgres_bindir().ok_or_else(|| {
        format!(
            "no {POSTGRES_URL_ENV} and no PostgreSQL server binaries (initdb, pg_ctl) installed; \
             install them (Debian: apt-get install postgresql) or point {POSTGRES_URL_ENV} at a server"
        )
    })?;
    start_cluster(&bin)
}

/// Where `initdb` and `pg_ctl` live: next to `pg_config --bindir`, on PATH, or in Debian's
/// versioned directories (newest first).
fn postgres_bindir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_both(&dir) {
            return Some(dir);
        }
    }
    if let Some(dir) =
        std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_both(d)))
    {
        return Some(dir);
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|dir| has_both(dir))
        .collect();
    debian.sort_by_key(|dir| {
        dir.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    debian.pop()
}

/// initdb refuses to run as root: then the cluster belongs to the `postgres` user.
fn run_as_postgres() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(bin.join(program));
        command
    } else {
        Command::new(bin.join(program))
    }
}

fn start_cluster(bin: &Path) -> Result<PostgresServer, String> {
    let as_postgres = run_as_postgres();
    let dir = std::env::temp_dir().join(format!("control-test-pg-{}", std::process::id()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if as_postgres {
        let chown = Command::new("chown")
            .args(["postgres:", &dir.display().to_string()])
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            return Err(
                "running as root, but cannot hand a temp dir to the `postgres` user".to_owned(),
            );
        }
    }
    let initdb = postgres_command(bin, "initdb", as_postgres)
        .args([
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let port = free_port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        dir.display()
    );
    let log = dir.join("postgres.log");
    let started = postgres_command(bin, "pg_ctl", as_postgres)
        .args([
            "-D",
            &data.display().to_string(),
            "-o",
            &options,
            "-l",
            &log.display().to_string(),
            "-w",
            "start",
        ])
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running pg_ctl: {e}"))?;
    if !started.status.success() {
        return Err(format!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    // Stop the cluster and remove its files once this test process is gone.
    let watcher = format!(
        "while [ -e /proc/{pid} ]; do sleep 1; done; \
         {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = bin.join("pg_ctl").display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut watch = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "setsid", "sh", "-c", &watcher]);
        c
    } else {
        let mut c = Command::new("setsid");
        c.args(["sh", "-c", &watcher]);
        c
    };
    watch
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the cluster's watcher: {e}"))?;
    Ok(PostgresServer {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        source: format!("a throwaway cluster from {} on port {port}", bin.display()),
    })
}

/// Drops test databases left behind by test processes that no longer run.
fn cleanup_stale_databases(admin_url: &str) {
    let admin_url = admin_url.to_owned();
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let mut admin = PgConnection::connect(&admin_url).await.ok()?;
            let names: Vec<String> =
                sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'ctl_t_%'")
                    .fetch_all(&mut admin)
                    .await
                    .ok()?;
            for name in names {
                let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            }
            admin.close().await.ok()
        })
    })
    .join();
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A TCP port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// A binary of this workspace built by the same `cargo test` run, found next to the test
/// executable (`target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
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

/// A long-running program under test (such as `control serve`), logging to a file so it can
/// never block on a full pipe, stopped with SIGTERM like systemd would.
#[derive(Debug)]
pub struct Daemon {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
    pub port: u16,
}

impl Daemon {
    /// Spawns `command` and waits until it accepts connections on 127.0.0.1:`port`.
    pub fn start(command: Command, port: u16) -> Self {
        let daemon = Self::spawn(command, port);
        daemon.wait_until("listening", std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    /// Spawns `command` without waiting for anything (`port` is informational, 0 if none).
    pub fn spawn(mut command: Command, port: u16) -> Self {
        let log = tempfile::NamedTempFile::new().expect("creating a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("opening the log file"))
            .spawn()
            .expect("spawning the daemon");
        Self { child, log, port }
    }

    /// Polls `ready` until it holds; panics with the log if the daemon exits or time runs out.
    pub fn wait_until(
        &self,
        what: &str,
        within: std::time::Duration,
        mut ready: impl FnMut() -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        while !ready() {
            assert!(
                self.is_running(),
                "the daemon exited while waiting for {what}:\n{}",
                self.log()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        // `try_wait` needs `&mut`; a signal 0 asks the kernel without reaping.
        Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .is_ok_and(|stat| stat.split(' ').nth(2) == Some("Z"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (such as `-TERM`, `-STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "could not send {signal}");
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM, waits up to 30 s for the exit, and returns its status and log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        self.wait_exit(std::time::Duration::from_secs(30))
    }

    /// Waits up to `within` for the process to exit; returns its status and log.
    pub fn wait_exit(mut self, within: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the daemon") {
                return (status, self.log());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test must not leave the daemon running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
