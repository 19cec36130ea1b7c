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
use tracing::{error, info};

use crate::app::App;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LogFormat, Overrides};
use crate::providers::Providers;
use crate::providers::local::LocalProvider;
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
    let app = open(&config).await?;
    match cli.command {
        Command::Serve { .. } => serve(app.clone(), &config).await?,
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
        Command::Openapi => {}
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
async fn open(config: &Config) -> anyhow::Result<App> {
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
    let local_dir = config.data_dir.join("local-vms");
    let local = LocalProvider::persistent(&local_dir).with_context(|| {
        format!(
            "cannot open the local provider's VMs in {}",
            local_dir.display()
        )
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(App::new(
        store,
        clock,
        Providers::new(Arc::new(local)),
        config.settings.clone(),
    ))
}

async fn serve(app: App, config: &Config) -> anyhow::Result<()> {
    if let Some(path) = accounts::ensure_operator_token(&app, &config.data_dir).await? {
        info!(path = %absolute(&path).display(), "first start: wrote an operator token (mode 0600) to this file");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(
        listen = %listener.local_addr()?,
        database = %redact_url(&config.database),
        data_dir = %absolute(&config.data_dir).display(),
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
        let _ = tokio::join!(jobs, rollup, ingest, reconciler);
    })
    .await;
    if drained.is_err() {
        error!("background tasks did not stop within 30 s; exiting anyway");
    }
    app.store.close().await;
    info!("control stopped");
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
