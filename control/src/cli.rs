//! The `control` command line. Every subcommand takes the same `--config`, `--data-dir` and
//! `--database` options, so it works on the same store as the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::DirBuilderExt;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use control_api::accounts::{CreateAccount, CreateToken};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LogFormat, Overrides};
use crate::providers::Providers;
use crate::providers::local::{LocalProvider, LocalVmConfig};
use crate::store::{Store, StoreOptions, redact_url};
use crate::{accounts, audit, http, ledger, tasks};

/// Exit code when `audit verify` finds a broken chain.
pub const EXIT_CHAIN_BROKEN: u8 = 1;
/// Exit code for every other failure.
pub const EXIT_FAILURE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "control",
    version,
    about = "The control plane API for dedicated-VM hosting"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "CONTROL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where SQLite, the operator token and local VMs live [default: ./control-data].
    #[arg(long, global = true, env = "CONTROL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: SQLite in the data dir].
    #[arg(long, global = true, env = "CONTROL_DATABASE", value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (and run jobs and the usage rollup).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "CONTROL_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Daily usage.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// Accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the OpenAPI document (`control openapi > control/openapi.json`).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 naming the first bad event if it is broken.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Recompute daily usage from the state periods (idempotent).
    Rollup,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account and print its id.
    Create { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (shown this once).
    Create {
        /// For this account.
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        account: Option<String>,
        /// An operator token.
        #[arg(long)]
        operator: bool,
        #[arg(long)]
        label: Option<String>,
    },
}

/// Runs the command line and returns the process's exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("control: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let listen = match &cli.command {
        Command::Serve { listen } => *listen,
        _ => None,
    };
    let overrides = Overrides {
        data_dir: cli.global.data_dir,
        database: cli.global.database,
        listen,
    };
    let config = Config::load(cli.global.config.as_deref(), &overrides)?;
    init_logging(config.log_format);
    if let Command::Openapi = cli.command {
        println!("{}", openapi_json());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Serve { .. } = cli.command {
        serve(&config).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let app = open(&config).await?;
    match cli.command {
        Command::Migrate => println!(
            "database schema is current ({})",
            redact_url(&config.database)
        ),
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let verdict = audit::verify(&app.store).await?;
            match verdict.first_bad {
                None => println!(
                    "audit chain ok: {} events, head {}",
                    verdict.events_checked,
                    verdict.head_hash.unwrap_or_default()
                ),
                Some(bad) => {
                    println!(
                        "audit chain BROKEN at event {}{}: {}",
                        bad.seq,
                        bad.event_id
                            .map(|id| format!(" ({id})"))
                            .unwrap_or_default(),
                        bad.reason
                    );
                    println!("events 1..={} are intact", verdict.events_checked);
                    return Ok(ExitCode::from(EXIT_CHAIN_BROKEN));
                }
            }
        }
        Command::Usage {
            command: UsageCommand::Rollup,
        } => {
            let summary = ledger::rollup(&app.store, app.clock.now()).await?;
            println!(
                "usage rolled up from {} through {}: {} rows",
                summary
                    .first_day
                    .map_or_else(|| summary.last_day.to_string(), |d| d.to_string()),
                summary.last_day,
                summary.rows
            );
        }
        Command::Account {
            command: AccountCommand::Create { name },
        } => {
            let account = accounts::create(&app, &CreateAccount { name }, None).await?;
            println!("{}", account.id);
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    account,
                    operator: _,
                    label,
                },
        } => {
            let token =
                accounts::create_token(&app, account.as_deref(), &CreateToken { label }, None)
                    .await?;
            println!("{}", token.token);
        }
        Command::Serve { .. } | Command::Openapi => {} // answered above
    }
    app.store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The OpenAPI document as committed: pretty JSON with a trailing newline.
pub fn openapi_json() -> String {
    http::openapi().to_pretty_json().unwrap_or_default()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests running several commands) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Opens and migrates the store and builds the application around it.
/// Creates the data dir (0700), opens the database and applies pending migrations.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    // The data dir holds the database and the operator token: only its owner may read it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let store = Store::connect(
        &config.database,
        &StoreOptions {
            max_connections: config.database_max_connections,
            ..StoreOptions::default()
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// The application for the one-shot commands, which never call a provider.
async fn open(config: &Config) -> anyhow::Result<App> {
    let store = open_store(config).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let providers = Providers::new(Arc::new(LocalProvider::in_memory()));
    Ok(App::new(store, clock, providers, config.settings.clone()))
}

/// The programs local VMs run: as configured, else next to this executable. Started from the
/// workspace it was built in (`cargo run -p control -- serve` on a fresh clone), control builds
/// the missing ones itself, into its own target directory and profile; one older than its
/// sources is used as it is, with a warning (cargo decides what to rebuild, not us).
fn local_binaries(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().context("cannot locate the control executable")?;
    let beside = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .filter(|w| w.join("Cargo.toml").is_file());
    // (configured path, default name, package, the sources it is built from, config key)
    let wanted = [
        (
            &config.local.vm_agent,
            "vm-agent",
            "vm-agent",
            &["vm-agent/src", "control/api/src"][..],
            "vm_agent",
        ),
        (
            &config.local.cloudflared,
            "stand-in-cloudflared",
            "test-support",
            &["tests/support/src"][..],
            "cloudflared",
        ),
    ];
    let binaries = wanted
        .map(|(configured, name, ..)| configured.clone().unwrap_or_else(|| beside.join(name)));
    if let Some(workspace) = &workspace {
        let mut missing = Vec::new();
        for ((configured, name, package, sources, _), binary) in wanted.iter().zip(&binaries) {
            if configured.is_some() {
                continue;
            }
            if !binary.is_file() {
                missing.push((*package, *name));
                continue;
            }
            let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
            let changed = sources
                .iter()
                .filter_map(|dir| newest(&workspace.join(dir)))
                .max();
            if let (Some(built), Some(changed)) = (built, changed)
                && changed > built
            {
                warn!(binary = %binary.display(), "local VMs run a {name} older than its sources; rebuild it with `cargo build -p {package}`");
            }
        }
        if !missing.is_empty() {
            build_beside(workspace, &beside, &missing)?;
        }
    }
    for ((_, name, package, _, key), binary) in wanted.iter().zip(&binaries) {
        anyhow::ensure!(
            binary.is_file(),
            "the local provider needs {name} at {}: build it (cargo build -p {package}) or set local_provider.{key}",
            binary.display()
        );
    }
    let [vm_agent, cloudflared] = binaries;
    Ok((vm_agent, cloudflared))
}

/// Builds `(package, binary)`s with one cargo run, into the target directory and profile this
/// executable was built in (`<target>/<profile>/`).
fn build_beside(workspace: &Path, beside: &Path, missing: &[(&str, &str)]) -> anyhow::Result<()> {
    let (Some(target), Some(profile)) =
        (beside.parent(), beside.file_name().and_then(|n| n.to_str()))
    else {
        anyhow::bail!("cannot tell the target directory of {}", beside.display());
    };
    let profile = if profile == "debug" { "dev" } else { profile };
    let names: Vec<&str> = missing.iter().map(|(_, name)| *name).collect();
    info!(
        binaries = %names.join(", "),
        profile,
        "building the programs the local provider's VMs run"
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build.current_dir(workspace).arg("build");
    for (package, name) in missing {
        build.args(["-p", package, "--bin", name]);
    }
    let status = build
        .args(["--profile", profile, "--target-dir"])
        .arg(target)
        .status()
        .context("cannot run cargo")?;
    anyhow::ensure!(status.success(), "building {} failed", names.join(" and "));
    Ok(())
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    // Before listening: whoever sees the port open finds the token written.
    if let Some(path) =
        accounts::ensure_operator_token(&store, SystemClock.now(), &config.data_dir).await?
    {
        info!(path = %absolute(&path).display(), "first start: wrote an operator token (mode 0600) to this file");
    }
    // Also before listening: a first start may build them, which takes a minute.
    let (vm_agent, cloudflared) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || local_binaries(&config)).await??
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    // Local VMs report to this replica unless told otherwise.
    let reachable = if address.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], address.port()))
    } else {
        address
    };
    let control_urls = if config.local.control_urls.is_empty() {
        vec![format!("http://{reachable}")]
    } else {
        config.local.control_urls.clone()
    };
    // Absolute: the VMs' own configuration names files in it.
    let local_dir = absolute(&config.data_dir.join("local-vms"));
    let local = Arc::new(
        LocalProvider::with_processes(
            &local_dir,
            LocalVmConfig {
                vm_agent,
                cloudflared,
                control_urls,
                heartbeat_interval: config.settings.ingest.interval,
            },
        )
        .with_context(|| {
            format!(
                "cannot open the local provider's VMs in {}",
                local_dir.display()
            )
        })?,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = App::new(
        store,
        clock,
        Providers::new(local.clone()),
        config.settings.clone(),
    );
    info!(
        listen = %address,
        database = %redact_url(&config.database),
        data_dir = %absolute(&config.data_dir).display(),
        replica = %app.replica_id,
        "control is serving"
    );
    let (stop, stopped) = watch::channel(false);
    let jobs = tokio::spawn(tasks::run_jobs(
        app.clone(),
        config.job_poll_interval,
        stopped.clone(),
    ));
    let ingest = tokio::spawn(tasks::run_ingest(app.clone(), stopped.clone()));
    let reconciler = tokio::spawn(tasks::run_reconciler(
        app.clone(),
        config.reconcile_interval,
        stopped.clone(),
    ));
    let vms = {
        let (local, stopped) = (local.clone(), stopped.clone());
        tokio::spawn(async move { local.supervise(stopped).await })
    };
    let rollup = tokio::spawn(tasks::run_rollup(
        app.clone(),
        config.rollup_interval,
        stopped,
    ));
    axum::serve(listener, http::router(app.clone()))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            info!("shutting down: finishing requests in flight");
            let _ = stop.send(true);
        })
        .await?;
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let _ = tokio::join!(jobs, rollup, ingest, reconciler, vms);
    })
    .await;
    if drained.is_err() {
        error!("background tasks did not stop within 30 s; exiting anyway");
    }
    app.store.close().await;
    info!("control stopped; local VMs keep running, as VMs do");
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops control");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
}
