//! `vm-agent`: see `vm-agent --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vm_agent::config::{Config, DEFAULT_PATH, Source};
use vm_agent::{agent, clone, logging, status};

#[derive(Debug, Parser)]
#[command(
    name = "vm-agent",
    version,
    about = "Supervises cloudflared, guards /data/home-coder, reports to control"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (under systemd: Type=notify).
    Run {
        #[arg(long, default_value = DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// On a clone (`[clone_from]`): copy the source Agent's slice into this VM's, once.
    ///
    /// Runs as root in its own unit (vm-agent-clone.service). Waits for the slice's volume and
    /// the source, reports its progress in `<volume>/.vm-agent-clone.json`; exit 0 when done
    /// (or nothing to do), 1 when it failed.
    CloneSlice {
        #[arg(long, default_value = DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file (and the files it names), then exit.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what the running agent supervises and how it is doing.
    Status {
        /// The status socket [default: `status_socket` from the config, or /run/vm-agent/status.sock].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
        /// Print the raw JSON snapshot.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Source::from_process(path)
        .and_then(|source| Config::load(&source))
        .map_err(|error| {
            eprintln!("vm-agent: invalid configuration: {error}");
            ExitCode::from(2)
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vm-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::CheckConfig { config: path } => match load(&path) {
            Ok(config) => {
                let clone = config
                    .clone_from
                    .as_ref()
                    .map(|c| format!(", clone of {} from {}", c.source_agent, c.source))
                    .unwrap_or_default();
                let ca = config
                    .control_ca
                    .as_ref()
                    .map(|ca| {
                        format!(
                            " trusting {} CA certificate(s) of {}",
                            ca.certificates.len(),
                            ca.file.display()
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{}: ok (agent {}, control {}{ca}, cloudflared {}, slice {}{clone})",
                    path.display(),
                    config.agent_id,
                    config.control_url,
                    config.cloudflared.binary.display(),
                    config.slice.path.display()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init(config.log_level, &config.agent_id, &config.image_version);
            let _ = rustls::crypto::ring::default_provider().install_default();
            match runtime.block_on(agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    log::error!(target: "agent", "vm-agent failed: {error}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CloneSlice { config } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init(config.log_level, &config.agent_id, &config.image_version);
            ExitCode::from(clone::clone_slice(&config))
        }
        Command::Status {
            socket,
            config,
            json,
        } => {
            let socket = socket.unwrap_or_else(|| socket_from(&config));
            match runtime.block_on(status::fetch(&socket)) {
                Ok(snapshot) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&snapshot).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Ok(snapshot) => {
                    print!("{}", status::render(&snapshot));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "vm-agent: cannot read the agent's status from {}: {e} (is vm-agent running? status needs root)",
                        socket.display()
                    );
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The socket named in the config file or its drop-ins, without validating the rest.
fn socket_from(config: &std::path::Path) -> PathBuf {
    Source::from_process(config)
        .and_then(|source| source.file_layers())
        .ok()
        .and_then(|(table, _)| {
            table
                .get("status_socket")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/run/vm-agent/status.sock"))
}
