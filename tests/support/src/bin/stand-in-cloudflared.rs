//! A stand-in for `cloudflared tunnel run`, for vm-agent's tests and benchmark.
//!
//! It takes cloudflared's flags (`tunnel [--no-autoupdate] [--metrics ADDR]
//! [--management-diagnostics=BOOL] [--grace-period DURATION] run [--token-file FILE]`, or the
//! token in `TUNNEL_TOKEN`), exits 255 on usage errors and invalid tokens like the real one,
//! serves `/ready`, `/metrics` and `/healthcheck` on the metrics address in the real shapes,
//! and drains on the first SIGTERM, exiting 0.
//!
//! Tests steer it with a JSON script (`STAND_IN_CLOUDFLARED_SCRIPT`), re-read while it runs:
//! `ready_after_ms`, `connections` (set 0 to drop them), `exit_after_ms` with `exit_code`,
//! `ignore_sigterm`, `drain_ms`, `stderr_lines_per_s`, `print_token`. Every start, signal and
//! exit is appended to `STAND_IN_CLOUDFLARED_LOG` as a JSON line.

#![allow(clippy::disallowed_methods, clippy::expect_used)] // a test program: it reads its environment and the wall clock

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::RwLock;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct Script {
    ready_after_ms: u64,
    connections: Option<u32>,
    exit_after_ms: Option<u64>,
    exit_code: i32,
    ignore_sigterm: bool,
    drain_ms: Option<u64>,
    stderr_lines_per_s: u32,
    print_token: bool,
}

struct State {
    started: Instant,
    script: RwLock<Script>,
    connector: String,
}

impl State {
    async fn connections(&self) -> u32 {
        let script = self.script.read().await;
        if self.started.elapsed() < Duration::from_millis(script.ready_after_ms) {
            0
        } else {
            script.connections.unwrap_or(4)
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn record(event: &serde_json::Value) {
    if let Some(path) = std::env::var_os("STAND_IN_CLOUDFLARED_LOG")
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{event}");
    }
}

fn log(level: &str, message: &str) {
    eprintln!("{} {level} {message}", time_text());
}

fn time_text() -> String {
    control_api::Timestamp::from_millis(i64::try_from(now_ms()).unwrap_or_default()).to_string()
}

fn usage(message: &str) -> ! {
    eprintln!("Incorrect Usage: {message}");
    record(&json!({"event": "exit", "pid": std::process::id(), "code": 255, "why": message}));
    std::process::exit(255);
}

fn read_script() -> Script {
    std::env::var_os("STAND_IN_CLOUDFLARED_SCRIPT")
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

struct Args {
    metrics: SocketAddr,
    token: Option<(String, &'static str)>,
    grace: Duration,
}

fn parse_args(argv: &[String]) -> Args {
    let mut metrics: SocketAddr = ([127, 0, 0, 1], 20241).into();
    let mut token_file: Option<PathBuf> = None;
    let mut token_argv: Option<String> = None;
    let mut grace = Duration::from_secs(30);
    let mut words = argv.iter().skip(1);
    let mut seen_tunnel = false;
    let mut seen_run = false;
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (word.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| words.next().cloned())
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag {
            "tunnel" if !seen_tunnel => seen_tunnel = true,
            "run" if seen_tunnel && !seen_run => seen_run = true,
            "--no-autoupdate" => {}
            "--management-diagnostics" => {
                let _ = inline;
            }
            "--metrics" => {
                metrics = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--metrics takes HOST:PORT"));
            }
            "--grace-period" => {
                let text = value();
                let secs: u64 = text
                    .trim_end_matches('s')
                    .parse()
                    .unwrap_or_else(|_| usage("--grace-period takes a duration like 30s"));
                grace = Duration::from_secs(secs);
            }
            "--token-file" if seen_run => token_file = Some(PathBuf::from(value())),
            "--token" if seen_run => token_argv = Some(value()),
            other => usage(&format!("flag provided but not defined: {other}")),
        }
    }
    if !seen_tunnel || !seen_run {
        usage("expected `tunnel ... run ...`");
    }
    let token = if let Some(path) = token_file {
        match std::fs::read_to_string(&path) {
            Ok(text) => Some((text.trim().to_owned(), "file")),
            Err(e) => {
                log(
                    "ERR",
                    &format!("Cannot read token file {}: {e}", path.display()),
                );
                usage("unreadable --token-file");
            }
        }
    } else if let Some(token) = token_argv {
        Some((token, "argv"))
    } else {
        std::env::var("TUNNEL_TOKEN").ok().map(|t| (t, "env"))
    };
    Args {
        metrics,
        token,
        grace,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let command_line: Vec<String> = std::env::args().collect();
    let args = parse_args(&command_line);
    let Some((token, source)) = args.token.clone() else {
        log(
            "ERR",
            "\"cloudflared tunnel run\" requires the ID or name of the tunnel to run as the last command line argument or in the configuration file.",
        );
        usage("no tunnel token");
    };
    let script = read_script();
    record(&json!({
        "event": "start",
        "pid": std::process::id(),
        "at_ms": now_ms(),
        "args": command_line,
        "token_source": source,
        "notify_socket": std::env::var_os("NOTIFY_SOCKET").is_some(),
        "watchdog": std::env::var_os("WATCHDOG_USEC").is_some() || std::env::var_os("WATCHDOG_PID").is_some(),
    }));
    if token == "invalid" || token.len() < 8 {
        log("ERR", "Provided Tunnel token is not valid.");
        record(&json!({"event": "exit", "pid": std::process::id(), "code": 255}));
        std::process::exit(255);
    }
    if script.print_token {
        log("INF", &format!("Using token {token}"));
    }
    let state = Arc::new(State {
        started: Instant::now(),
        script: RwLock::new(script),
        connector: format!("{:032x}", now_ms()),
    });
    let listener = match tokio::net::TcpListener::bind(args.metrics).await {
        Ok(listener) => listener,
        Err(e) => {
            log(
                "ERR",
                &format!("failed to bind metrics server on {}: {e}", args.metrics),
            );
            record(&json!({"event": "exit", "pid": std::process::id(), "code": 1}));
            std::process::exit(1);
        }
    };
    log(
        "INF",
        &format!("Starting metrics server on {}/metrics", args.metrics),
    );
    let app = Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/healthcheck", get(|| async { "OK\n" }))
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    run(state, args.grace).await;
}

async fn ready(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
) -> (StatusCode, String) {
    let connections = state.connections().await;
    if connections > 0 {
        (
            StatusCode::OK,
            json!({"status": 200, "readyConnections": connections, "connectorId": state.connector})
                .to_string(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": 503, "readyConnections": 0, "connectorId": state.connector})
                .to_string(),
        )
    }
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<State>>) -> String {
    let connections = state.connections().await;
    format!(
        "# HELP build_info Build and version information\n# TYPE build_info gauge\nbuild_info{{goversion=\"stand-in\",revision=\"stand-in\",type=\"stand-in\",version=\"2026.11.0\"}} 1\n\
         # HELP cloudflared_tunnel_ha_connections Number of active ha connections\n# TYPE cloudflared_tunnel_ha_connections gauge\ncloudflared_tunnel_ha_connections {connections}\n"
    )
}

async fn run(state: Arc<State>, grace: Duration) {
    let pid = std::process::id();
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut was_ready = false;
    let mut draining: Option<Instant> = None;
    let mut chatter = Instant::now();
    loop {
        let signalled = tokio::select! {
            _ = terminate.recv() => Some("TERM"),
            _ = interrupt.recv() => Some("INT"),
            _ = tick.tick() => None,
        };
        *state.script.write().await = read_script();
        let script = state.script.read().await.clone();
        if let Some(name) = signalled {
            record(
                &json!({"event": "signal", "pid": pid, "signal": name, "ignored": script.ignore_sigterm}),
            );
            if script.ignore_sigterm {
                log("INF", &format!("Received SIG{name}; ignoring it"));
            } else if draining.is_some() {
                log("INF", "Received a second signal; exiting now");
                exit(1);
            } else {
                log("INF", "Initiating graceful shutdown due to signal ...");
                draining = Some(Instant::now());
            }
        }
        let drain = script.drain_ms.map_or(grace, Duration::from_millis);
        if draining.is_some_and(|since| since.elapsed() >= drain) {
            exit(0);
        }
        if let Some(after) = script.exit_after_ms
            && state.started.elapsed() >= Duration::from_millis(after)
        {
            log(
                "ERR",
                &format!("Exiting with code {} as scripted", script.exit_code),
            );
            exit(script.exit_code);
        }
        let ready = state.connections().await > 0;
        if ready && !was_ready {
            log(
                "INF",
                "Registered tunnel connection connIndex=0 event=0 ip=198.41.192.7 location=fra08 protocol=quic",
            );
        }
        if !ready && was_ready {
            log(
                "ERR",
                "Connection terminated error=\"stand-in: connections dropped\" connIndex=0",
            );
        }
        was_ready = ready;
        if script.stderr_lines_per_s > 0 && chatter.elapsed() >= Duration::from_secs(1) {
            chatter = Instant::now();
            for n in 0..script.stderr_lines_per_s {
                log("INF", &format!("chatter line {n}"));
            }
        }
    }
}

fn exit(code: i32) -> ! {
    record(&json!({"event": "exit", "pid": std::process::id(), "code": code}));
    std::process::exit(code);
}
