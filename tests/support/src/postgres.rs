//! The PostgreSQL server tests create their databases on: `CONTROL_TEST_POSTGRES_URL`, else a
//! throwaway cluster started once per test process with the installed `initdb`/`pg_ctl`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::{POSTGRES_URL_ENV, free_port, skip};

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

/// A cluster of one test's own, which it may stop hard and start again (never the shared
/// server, which other tests use): stopped and removed when dropped.
#[derive(Debug)]
pub struct OwnCluster {
    bin: PathBuf,
    dir: PathBuf,
    options: String,
    as_postgres: bool,
    pub admin_url: String,
}

impl OwnCluster {
    /// Initialises and starts a cluster under a temp dir of its own.
    pub fn start() -> Result<Self, String> {
        let bin = postgres_bindir()
            .ok_or("no PostgreSQL server binaries (initdb, pg_ctl) installed".to_owned())?;
        let dir = std::env::temp_dir().join(format!(
            "control-test-own-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        let (options, as_postgres, admin_url) = init_cluster(&bin, &dir)?;
        let cluster = Self {
            bin,
            dir,
            options,
            as_postgres,
            admin_url,
        };
        cluster.pg_ctl(&["-w", "start"])?;
        Ok(cluster)
    }

    /// `pg_ctl stop -m immediate`: the server dies mid-transaction, as on a crash.
    pub fn stop_immediate(&self) -> Result<(), String> {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"])
    }

    /// Starts the stopped cluster again, on the same port; it recovers from its WAL.
    pub fn restart(&self) -> Result<(), String> {
        self.pg_ctl(&["-w", "start"])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let log = self.dir.join("postgres.log");
        let out = postgres_command(&self.bin, "pg_ctl", self.as_postgres)
            .args(["-D", &self.dir.join("data").display().to_string()])
            .args(["-o", &self.options, "-l", &log.display().to_string()])
            .args(args)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("running pg_ctl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `initdb` under `dir` (handed to the `postgres` user when running as root) and picks a
/// port: the server options, whether commands run as `postgres`, and the admin URL.
fn init_cluster(bin: &Path, dir: &Path) -> Result<(String, bool, String), String> {
    let as_postgres = run_as_postgres();
    let data = dir.join("data");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
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
    Ok((
        options,
        as_postgres,
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
    ))
}

fn start_cluster(bin: &Path) -> Result<PostgresServer, String> {
    let dir = std::env::temp_dir().join(format!("control-test-pg-{}", std::process::id()));
    let data = dir.join("data");
    let (options, as_postgres, admin_url) = init_cluster(bin, &dir)?;
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
        source: format!("a throwaway cluster from {} at {admin_url}", bin.display()),
        admin_url,
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
