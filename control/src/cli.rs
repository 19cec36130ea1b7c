//! The `control` command line: parses and dispatches, nothing more (the wiring is in
//! `server`). Every subcommand takes the same `--config`, `--data-dir` and `--database`
//! options, so it works on the same store as the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use control_api::accounts::{CreateAccount, CreateToken};
use control_api::images::{RegisterImage, SetCurrentImage};

use crate::config::{Config, EnvTokens, Overrides};
use crate::providers::Secret;
use crate::store::redact_url;
use crate::{accounts, audit, http, images, ledger, server};

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
        /// Address `/metrics` is served on, apart from the API [default: 127.0.0.1:9180];
        /// the API's own address serves it with the API.
        #[arg(long, env = "CONTROL_METRICS_LISTEN", value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
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
    /// Platform image releases.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Print the OpenAPI document (`control openapi > control/openapi.json`).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits 1 naming the first bad event if it is broken.
    Verify {
        /// A checkpoint kept outside control (one item of `GET /api/audit/checkpoints`, or the
        /// `checkpoint` field of its log line): the chain must still hold every event it signed.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The checkpoint must be signed by this ed25519 public key (hex) [default: whichever
        /// key it names].
        #[arg(long, value_name = "HEX", requires = "checkpoint")]
        public_key: Option<String>,
    },
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

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Register the release baked into an Agent image, from the `manifest.json` `image/build`
    /// wrote beside it, and print it as JSON.
    ///
    /// The release's version and vm-agent version come from the manifest, its
    /// `manifest_digest` is the SHA-256 of the file's bytes. Running it again with the same
    /// manifest, refs and env prints the registered release and succeeds; a release already
    /// registered otherwise is refused (exit 2) naming what differs, and nothing changes. A
    /// plain image's manifest is refused: it is not an Agent release.
    Register {
        /// The image's `manifest.json`.
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        /// Where the image is at a provider, e.g. `hetzner=123456` (a snapshot's id),
        /// `fly=registry.fly.io/agent@sha256:…`, `local=NAME`; repeatable, at least one.
        #[arg(long = "ref", value_name = "PROVIDER=REF", required = true, value_parser = key_value)]
        refs: Vec<(String, String)>,
        /// An environment variable every Agent provisioned on this release gets; repeatable.
        #[arg(long = "env", value_name = "NAME=VALUE", value_parser = key_value)]
        env: Vec<(String, String)>,
        /// Also make it the current release (the one new Agents are provisioned on).
        #[arg(long)]
        current: bool,
    },
}

/// `KEY=VALUE` (the value may contain `=`).
fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// `pairs` as a map, refusing a key given twice.
fn unique(
    what: &str,
    pairs: Vec<(String, String)>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value).is_some() {
            anyhow::bail!("{what} {key} is given twice");
        }
    }
    Ok(map)
}

/// `control image register`: the manifest read and checked, the release registered (or found
/// registered exactly so), and with `current` made current.
async fn register_release(app: &crate::app::App, command: ImageCommand) -> anyhow::Result<String> {
    let ImageCommand::Register {
        manifest,
        refs,
        env,
        current,
    } = command;
    let read = images::manifest::read(&manifest)?;
    let request = RegisterImage {
        version: read.release,
        agent_version: read.agent_version,
        manifest_digest: read.digest,
        refs: unique("--ref", refs)?,
        env: unique("--env", env)?,
    };
    let mut image = images::register_once(app, &request).await?;
    if current && !image.current {
        image = images::set_current(
            app,
            &SetCurrentImage {
                image_id: image.id.clone(),
            },
        )
        .await?;
    }
    Ok(serde_json::to_string(&image)?)
}

/// `control audit verify`: the chain walked (and held against a checkpoint if one is given),
/// the verdict printed; exit 1 when it is broken.
async fn verify_audit(
    app: &crate::app::App,
    checkpoint: Option<&std::path::Path>,
    public_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let checkpoint = match checkpoint {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the checkpoint {}", path.display()))?;
            let checkpoint: control_api::audit::AuditCheckpoint = serde_json::from_str(&text)
                .with_context(|| {
                    format!(
                        "{} is not a checkpoint (one item of GET /api/audit/checkpoints)",
                        path.display()
                    )
                })?;
            audit::checkpoint::check_signature(&checkpoint, public_key).map_err(|reason| {
                anyhow::anyhow!(
                    "the checkpoint {} is not evidence: {reason}",
                    path.display()
                )
            })?;
            Some(checkpoint)
        }
    };
    let verdict = audit::verify_to(&app.store, checkpoint.as_ref()).await?;
    let Some(bad) = verdict.first_bad else {
        println!(
            "audit chain ok: {} events, head {}",
            verdict.events_checked,
            verdict.head_hash.unwrap_or_default()
        );
        if let Some(checkpoint) = checkpoint {
            println!(
                "it holds every event of the checkpoint of event {} signed at {} by key {}",
                checkpoint.seq, checkpoint.at, checkpoint.public_key
            );
        }
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "audit chain BROKEN at event {}{}: {}",
        bad.seq,
        bad.event_id
            .map(|id| format!(" ({id})"))
            .unwrap_or_default(),
        bad.reason
    );
    println!("events 1..={} are intact", verdict.events_checked);
    Ok(ExitCode::from(EXIT_CHAIN_BROKEN))
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
    let (listen, metrics_listen) = match &cli.command {
        Command::Serve {
            listen,
            metrics_listen,
        } => (*listen, *metrics_listen),
        _ => (None, None),
    };
    let overrides = Overrides {
        data_dir: cli.global.data_dir,
        database: cli.global.database,
        listen,
        metrics_listen,
        tokens: env_tokens(),
    };
    let config = Config::load(cli.global.config.as_deref(), &overrides)?;
    server::init_logging(config.log_format);
    if let Command::Openapi = cli.command {
        println!("{}", http::openapi_json());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Serve { .. } = cli.command {
        server::serve(&config).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let app = server::open(&config).await?;
    match cli.command {
        Command::Migrate => println!(
            "database schema is current ({})",
            redact_url(&config.database)
        ),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    checkpoint,
                    public_key,
                },
        } => {
            let code = verify_audit(&app, checkpoint.as_deref(), public_key.as_deref()).await?;
            if code != ExitCode::SUCCESS {
                app.store.close().await;
                return Ok(code);
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
        Command::Image { command } => {
            let printed = register_release(&app, command).await;
            app.store.close().await;
            println!("{}", printed?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Serve { .. } | Command::Openapi => {} // answered above
    }
    app.store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// The provider tokens in this process's environment (never on the command line, where any
/// user could read them).
fn env_tokens() -> EnvTokens {
    let token = |name: &str| {
        std::env::var_os(name)
            .and_then(|value| value.into_string().ok())
            .map(Secret)
    };
    EnvTokens {
        hetzner: token("HCLOUD_TOKEN"),
        cloudflare: token("CLOUDFLARE_API_TOKEN"),
        fly: token("FLY_API_TOKEN"),
    }
}
