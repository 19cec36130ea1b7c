//! The heartbeat ingest benchmark.
//!
//! Seeds a fresh database with N running Agents, each with its own credential, and drives the
//! release `control serve` on it from this process over keep-alive HTTP/1.1 connections, on
//! the same cores:
//!
//! 1. a restart: control started on the seeded database and, from the moment it answers, the
//!    first heartbeat of every Agent at once, as a fleet reconnecting finds it. Twice: with
//!    each credential read alone on its first use (the previous way, the baseline), then
//!    with the credentials loaded in bulk at start (the default);
//! 2. what that load costs in memory: control started once more, its RSS once the load is done
//!    and before any heartbeat, next to the baseline control's before any heartbeat;
//! 3. the steady state on the second control: `GET /healthz` (the floor: the same server under
//!    the same load doing nothing but answering) and heartbeats round-robin over all Agents,
//!    in short slices that alternate over several rounds (floor first in even rounds,
//!    heartbeats first in odd ones), so the machine's noise lands on both alike; each round
//!    gives one heartbeat/floor ratio, and the median and spread of those are printed.
//!
//! It prints the restart figures side by side, then requests/s (median of the rounds), p50
//! and p99 latency (over all slices), control's peak RSS, and the CPU time control and the
//! load generator spent per answer (from `/proc`, so the machine's noise, which moves the
//! rates, hardly moves them) for the heartbeats next to the floor, the ratios, the rows
//! written per heartbeat (from control's `/metrics`), and the goals. On SQLite, on
//! PostgreSQL, or both.
//!
//! `bash control/bench/ingest.sh --help` lists the options.

#![allow(clippy::cast_precision_loss)] // figures for people: counts far below 2^52

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use control::clock::Clock as _;
use control::store::{
    AccountRow, CredentialRow, ImageRow, NewAgent, OperationOutcome, Store, StoreOptions,
};
use control_api::Timestamp;
use control_api::agent::{
    Heartbeat, HostMetrics, SliceReport, SliceState, TunnelReport, TunnelState,
};
use control_api::agents::{AgentOperation, PeriodState};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Agents per seeding transaction.
const SEED_BATCH: usize = 1_000;
/// Goals of issue 4 on this 2-core machine.
const GOAL_RATE: f64 = 20_000.0;
const GOAL_P99_MS: f64 = 25.0;
/// Goals of issue 12: the first heartbeats of a restart absorbed within this, and the median
/// round's heartbeat rate at least this share of its floor's.
const GOAL_RESTART_S: f64 = 10.0;
const GOAL_FLOOR_SHARE: f64 = 0.9;
/// What control logs once its credentials are loaded.
const LOADED_LINE: &str = "agent credentials loaded";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Parser)]
#[command(
    about = "Heartbeat ingest of the release control after a restart and in the steady \
                   state, next to its /healthz floor"
)]
struct Args {
    /// Simulated Agents, each with its own credential.
    #[arg(long, default_value_t = 100_000)]
    agents: usize,
    /// Rounds of the steady state, each a floor slice and a heartbeat slice.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Milliseconds each slice runs.
    #[arg(long, default_value_t = 1_000)]
    slice_ms: u64,
    /// Keep-alive connections the load generator keeps busy.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, value_enum, default_value_t = Backend::Both)]
    backend: Backend,
    /// A PostgreSQL server where the benchmark may create (and then drop) a database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// The `control` binary to measure (the release build).
    #[arg(long, default_value = "target/release/control")]
    control: PathBuf,
}

/// One simulated Agent.
struct Agent {
    id: String,
    credential: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.agents > 0 && args.connections > 0 && args.rounds > 0 && args.slice_ms > 0,
        "agents, connections, rounds and slice-ms must be positive"
    );
    ensure!(
        args.control.is_file(),
        "no control binary at {}: build it with `cargo build --release -p control` (ingest.sh does)",
        args.control.display()
    );
    // The load generator gets the machine's cores too: it shares them with control, as a fleet's
    // load balancer would not, which makes the figures conservative.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if matches!(args.backend, Backend::Sqlite | Backend::Both) {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite:{}", dir.path().join("control.db").display());
            run(&args, "SQLite", &url, dir.path()).await?;
        }
        if matches!(args.backend, Backend::Postgres | Backend::Both) {
            let dir = tempfile::tempdir()?;
            let database = Scratch::create(&args.postgres_url).await?;
            let outcome = run(&args, "PostgreSQL", &database.url, dir.path()).await;
            database.drop_it().await;
            outcome?;
        }
        Ok(())
    })
}

/// A throwaway PostgreSQL database.
struct Scratch {
    admin: String,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        use sqlx::Connection as _;
        let name = format!("ingest_bench_{}", std::process::id());
        let mut connection = sqlx::PgConnection::connect(admin).await.with_context(|| {
            format!("cannot reach PostgreSQL at {admin} (pass --postgres-url, or --backend sqlite)")
        })?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut connection)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await?;
        let (base, _) = admin
            .rsplit_once('/')
            .context("the PostgreSQL URL names no database")?;
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }

    async fn drop_it(self) {
        use sqlx::Connection as _;
        if let Ok(mut connection) = sqlx::PgConnection::connect(&self.admin).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut connection)
            .await;
        }
    }
}

/// Where one backend's run happens, and with what.
struct Bench<'a> {
    args: &'a Args,
    url: &'a str,
    dir: &'a Path,
    fleet: Arc<Fleet>,
}

async fn run(args: &Args, backend: &str, url: &str, dir: &Path) -> anyhow::Result<()> {
    println!(
        "heartbeat ingest on {backend}: {} Agents, {} keep-alive connections, {} rounds of {} ms slices",
        args.agents, args.connections, args.rounds, args.slice_ms
    );
    let started = Instant::now();
    let agents = seed(url, args.agents).await?;
    println!(
        "  seeded {} running Agents with their credentials in {:.1} s",
        agents.len(),
        started.elapsed().as_secs_f64()
    );
    let bench = Bench {
        args,
        url,
        dir,
        fleet: Arc::new(Fleet {
            agents,
            template: Template::new()?,
            sent: AtomicU64::new(0),
            boot: Instant::now(),
        }),
    };
    let count = bench.fleet.agents.len() as u64;

    // The previous way first: its control's RSS before any heartbeat is control's own floor.
    let (baseline, _) = bench.restart(false).await?;
    let memory = bench.load_cost().await?;
    let (bulk, server) = bench.restart(true).await?;

    // The first heartbeat of each Agent makes this replica its custodian, written behind within
    // a second; the measuring starts once that is done, in the steady state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut before = server.metrics().await?;
    while before.rows < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = server.metrics().await?;
    }
    if before.rows < count {
        println!(
            "  warning: only {} of {count} first heartbeats written behind after 30 s; the rows below include the rest",
            before.rows
        );
    }
    let rounds = bench.alternate(&server).await?;
    let after = server.metrics().await?;
    let beats_rss = server.peak_rss_kib()?;
    let stopping = Instant::now();
    let log = server.stop()?;
    report(&Report {
        agents: count,
        baseline,
        bulk,
        memory,
        rounds,
        floor_rss: memory.without_kib,
        beats_rss,
        before,
        after,
        log_lines: log.lines().count(),
        stopped_in: stopping.elapsed(),
    });
    Ok(())
}

/// A restart's storm: the first heartbeat of every Agent, sent from the moment control
/// answers.
struct Storm {
    phase: Phase,
    /// From starting control to its first answer.
    serving_after: Duration,
    /// Control's peak RSS once the storm is absorbed.
    rss_kib: u64,
}

/// What the bulk load costs in memory: control's RSS before any heartbeat, without and with.
#[derive(Clone, Copy)]
struct Memory {
    without_kib: u64,
    with_kib: u64,
    /// As control logged it.
    load_ms: Option<u64>,
}

impl Bench<'_> {
    async fn start(&self, preload: bool, name: &str) -> anyhow::Result<Server> {
        Server::start(&self.args.control, self.url, self.dir, preload, name).await
    }

    /// Starts control, with or without the bulk load, and sends the first heartbeat of every
    /// Agent from the moment it answers. Returns the running control when it loads in bulk (the
    /// steady state is measured on it); stops the other.
    async fn restart(&self, preload: bool) -> anyhow::Result<(Storm, Server)> {
        let launched = Instant::now();
        let server = self
            .start(preload, if preload { "bulk" } else { "alone" })
            .await?;
        let serving_after = launched.elapsed();
        let phase = drive(
            &server.address,
            self.args.connections,
            Load::Heartbeats(self.fleet.clone()),
            Until::Sent(self.fleet.agents.len() as u64),
        )
        .await?;
        let storm = Storm {
            phase,
            serving_after,
            rss_kib: server.peak_rss_kib()?,
        };
        Ok((storm, server))
    }

    /// Control's RSS before any heartbeat, after a floor slice: without the bulk load (the
    /// floor's RSS), and with it once its log says the load is done.
    async fn load_cost(&self) -> anyhow::Result<Memory> {
        let slice = Duration::from_millis(self.args.slice_ms);
        let mut kib = [0; 2];
        let mut load_ms = None;
        for (preload, kib) in [false, true].into_iter().zip(&mut kib) {
            let server = self.start(preload, "memory").await?;
            if preload {
                load_ms = Some(server.wait_for_load().await?);
            }
            drive(
                &server.address,
                self.args.connections,
                Load::Healthz,
                Until::Elapsed(slice),
            )
            .await?;
            *kib = server.peak_rss_kib()?;
            server.stop()?;
        }
        Ok(Memory {
            without_kib: kib[0],
            with_kib: kib[1],
            load_ms,
        })
    }

    /// Floor and heartbeat slices, alternating over the rounds, with the CPU time control and
    /// this process spent in each.
    async fn alternate(&self, server: &Server) -> anyhow::Result<Rounds> {
        let address = &server.address;
        let slice = Until::Elapsed(Duration::from_millis(self.args.slice_ms));
        let connections = self.args.connections;
        let mut rounds = Rounds::default();
        for round in 0..self.args.rounds {
            let beats_first = round % 2 == 1;
            let mut floor = None;
            let mut beats = None;
            for heartbeats in [beats_first, !beats_first] {
                let cpu = (cpu_time(server.child.id())?, cpu_time(std::process::id())?);
                let load = if heartbeats {
                    Load::Heartbeats(self.fleet.clone())
                } else {
                    Load::Healthz
                };
                let mut phase = drive(address, connections, load, slice).await?;
                phase.control_cpu = cpu_time(server.child.id())?.saturating_sub(cpu.0);
                phase.bench_cpu = cpu_time(std::process::id())?.saturating_sub(cpu.1);
                *(if heartbeats { &mut beats } else { &mut floor }) = Some(phase);
            }
            let (Some(floor), Some(beats)) = (floor, beats) else {
                bail!("a round without both of its slices");
            };
            rounds.add(floor, beats);
        }
        Ok(rounds)
    }
}

/// The slices of the alternating rounds.
#[derive(Default)]
struct Rounds {
    floor_rates: Vec<f64>,
    beat_rates: Vec<f64>,
    /// Each round's heartbeat rate over its floor's.
    ratios: Vec<f64>,
    floor: Phase,
    beats: Phase,
}

impl Rounds {
    fn add(&mut self, floor: Phase, beats: Phase) {
        self.floor_rates.push(floor.rate());
        self.beat_rates.push(beats.rate());
        self.ratios.push(beats.rate() / floor.rate());
        self.floor.absorb(floor);
        self.beats.absorb(beats);
    }
}

/// The `q` quantile of `values` (linear between the nearest ranks).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = q * (sorted.len() - 1) as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (at - at.floor())
}

/// "median (min-max)" of per-round figures.
fn spread(values: &[f64], digits: usize) -> String {
    format!(
        "{:.digits$} ({:.digits$}-{:.digits$})",
        quantile(values, 0.5),
        quantile(values, 0.0),
        quantile(values, 1.0)
    )
}

/// What one backend's run measured.
struct Report {
    agents: u64,
    baseline: Storm,
    bulk: Storm,
    memory: Memory,
    rounds: Rounds,
    floor_rss: u64,
    beats_rss: u64,
    before: Metrics,
    after: Metrics,
    log_lines: usize,
    stopped_in: Duration,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn report_restart(report: &Report, agents: u64) {
    let (alone, bulk) = (&report.baseline, &report.bulk);
    println!();
    println!(
        "  restart: the first heartbeat of each of {agents} Agents, sent from the moment control answers"
    );
    println!("                               each read alone    loaded in bulk    ratio");
    println!(
        "    all answered in            {:>11.1} s     {:>11.1} s    {:.2}x",
        alone.phase.elapsed.as_secs_f64(),
        bulk.phase.elapsed.as_secs_f64(),
        bulk.phase.elapsed.as_secs_f64() / alone.phase.elapsed.as_secs_f64()
    );
    println!(
        "    heartbeats/s               {:>13.0}     {:>13.0}",
        alone.phase.rate(),
        bulk.phase.rate()
    );
    println!(
        "    p50 / p99 latency    {:>8.2} / {:>6.2} ms  {:>6.2} / {:>6.2} ms",
        alone.phase.percentile(0.50),
        alone.phase.percentile(0.99),
        bulk.phase.percentile(0.50),
        bulk.phase.percentile(0.99)
    );
    println!(
        "    errors                     {:>13}     {:>13}",
        alone.phase.errors, bulk.phase.errors
    );
    println!(
        "    control answered after     {:>11.1} s     {:>11.1} s",
        alone.serving_after.as_secs_f64(),
        bulk.serving_after.as_secs_f64()
    );
    println!(
        "    control peak RSS after     {:>9.1} MiB     {:>9.1} MiB",
        mib(alone.rss_kib),
        mib(bulk.rss_kib)
    );
    let memory = &report.memory;
    let extra = memory.with_kib.saturating_sub(memory.without_kib);
    println!(
        "  the bulk load alone: {} in control's log; control's RSS before any heartbeat {:.1} MiB with it, {:.1} MiB without ({:.0} bytes per Agent)",
        memory
            .load_ms
            .map_or_else(|| "no time".to_owned(), |ms| format!("{ms} ms")),
        mib(memory.with_kib),
        mib(memory.without_kib),
        (extra * 1024) as f64 / agents as f64
    );
}
fn report(report: &Report) {
    let rounds = &report.rounds;
    let (floor, beats) = (&rounds.floor, &rounds.beats);
    let (before, after) = (&report.before, &report.after);
    let rows = after.rows - before.rows;
    let taken = after.heartbeats - before.heartbeats;
    report_restart(report, report.agents);
    println!();
    println!(
        "  steady state: floor and heartbeat slices alternating over {} rounds; median of the rounds (min-max)",
        rounds.ratios.len()
    );
    println!("                             heartbeats            /healthz floor");
    println!(
        "    requests/s     {:>22}    {:>22}",
        spread(&rounds.beat_rates, 0),
        spread(&rounds.floor_rates, 0)
    );
    println!(
        "    p50 latency    {:>19.2} ms    {:>19.2} ms",
        beats.percentile(0.50),
        floor.percentile(0.50)
    );
    println!(
        "    p99 latency    {:>19.2} ms    {:>19.2} ms",
        beats.percentile(0.99),
        floor.percentile(0.99)
    );
    println!(
        "    control peak RSS {:>16.1} MiB  {:>18.1} MiB (before any heartbeat)",
        mib(report.beats_rss),
        mib(report.floor_rss)
    );
    println!(
        "    errors         {:>22}    {:>22}",
        beats.errors, floor.errors
    );
    let (beat_cpu, floor_cpu) = (beats.cpu_per_answer(), floor.cpu_per_answer());
    println!(
        "    CPU per answer {:>16.1} µs    {:>19.1} µs   control",
        beat_cpu.0, floor_cpu.0
    );
    println!(
        "                   {:>16.1} µs    {:>19.1} µs   load generator",
        beat_cpu.1, floor_cpu.1
    );
    let ratio = quantile(&rounds.ratios, 0.5);
    println!(
        "    heartbeat/floor ratio: median {ratio:.2}x, interquartile {:.2}-{:.2}x, min-max {:.2}-{:.2}x",
        quantile(&rounds.ratios, 0.25),
        quantile(&rounds.ratios, 0.75),
        quantile(&rounds.ratios, 0.0),
        quantile(&rounds.ratios, 1.0)
    );
    println!(
        "    rows written while measuring: {rows} liveness rows for {taken} heartbeats ({:.4} per heartbeat), {} transitions",
        rows as f64 / taken.max(1) as f64,
        after.transitions - before.transitions
    );
    println!(
        "    control logged {} lines at INFO and above in the run, and stopped {:.1} s after SIGTERM",
        report.log_lines,
        report.stopped_in.as_secs_f64()
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let restart = report.bulk.phase.elapsed.as_secs_f64();
    let beat_rate = quantile(&rounds.beat_rates, 0.5);
    let errors = beats.errors + floor.errors + report.bulk.phase.errors;
    println!(
        "  goals: restart absorbed < {GOAL_RESTART_S:.0} s ({}), >= {GOAL_RATE:.0} heartbeats/s ({}), p99 < {GOAL_P99_MS:.0} ms ({}), median ratio >= {GOAL_FLOOR_SHARE}x the floor ({}), no errors ({})",
        verdict(restart < GOAL_RESTART_S),
        verdict(beat_rate >= GOAL_RATE),
        verdict(beats.percentile(0.99) < GOAL_P99_MS),
        verdict(ratio >= GOAL_FLOOR_SHARE),
        verdict(errors == 0),
    );
    println!();
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Writes an account, an image and `count` Agents, each provisioned, running since a minute
/// ago and holding a credential, as control itself would have recorded them. Their provider is
/// `hetzner`, which this control does not configure, so its reconciler leaves them alone.
async fn seed(url: &str, count: usize) -> anyhow::Result<Vec<Agent>> {
    let store = Store::connect(url, &StoreOptions::default()).await?;
    store.migrate().await?;
    let now = control::clock::SystemClock.now().as_millis();
    let provisioned = now - 60_000;
    let account = control::ids::new_id("acc");
    let image = control::ids::new_id("img");
    let mut tx = store.write().await?;
    tx.insert_account(&AccountRow {
        id: account.clone(),
        name: "Bench".to_owned(),
        created_at: provisioned,
    })
    .await?;
    tx.insert_image(&ImageRow {
        id: image.clone(),
        version: "2026.11.0".to_owned(),
        agent_version: "0.1.0".to_owned(),
        manifest_digest: format!("sha256:{}", "0".repeat(64)),
        refs: r#"{"hetzner":"123456"}"#.to_owned(),
        env: "{}".to_owned(),
        created_at: provisioned,
    })
    .await?;
    tx.commit().await?;

    let mut agents = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(SEED_BATCH) {
        let mut tx = store.write().await?;
        for n in batch * SEED_BATCH..count.min((batch + 1) * SEED_BATCH) {
            let id = control::ids::new_id("agt");
            let name = format!("bench-{n}");
            let provider_id = format!("{}", 10_000_000 + n);
            tx.insert_agent(&NewAgent {
                id: &id,
                account_id: &account,
                name: &name,
                provider: "hetzner",
                image_id: &image,
                image_ref: "123456",
                env: "{}",
                provisioned_at: provisioned,
                cloned_from: None,
            })
            .await?;
            control::ledger::open(
                &mut tx,
                control::ledger::ResourceRef::agent(&id),
                &account,
                PeriodState::Paused,
                Timestamp::from_millis(provisioned),
            )
            .await?;
            let outcome = OperationOutcome {
                provider_id: Some(&provider_id),
                state: Some(PeriodState::Running),
                error: None,
            };
            ensure!(
                tx.finish_operation(
                    &id,
                    AgentOperation::Provision,
                    &outcome,
                    provisioned + 1_000
                )
                .await?
            );
            control::ledger::switch(
                &mut tx,
                control::ledger::ResourceRef::agent(&id),
                &account,
                PeriodState::Running,
                Timestamp::from_millis(provisioned + 1_000),
            )
            .await?;
            let secret = control::auth::random_secret()?;
            let credential = CredentialRow {
                id: control::ids::new_id("crd"),
                agent_id: id.clone(),
                secret_hash: sha256_hex(&secret),
                revoked_at: None,
            };
            tx.insert_credential(&credential, provisioned + 2_000)
                .await?;
            agents.push(Agent {
                credential: format!("agc_{}_{secret}", credential.id),
                id,
            });
        }
        tx.commit().await?;
    }
    store.close().await;
    Ok(agents)
}

/// The release control under test.
struct Server {
    child: Child,
    address: String,
    log: PathBuf,
}

/// Counters from control's `/metrics`.
struct Metrics {
    heartbeats: u64,
    rows: u64,
    transitions: u64,
}

impl Server {
    /// Starts control on `url` and returns once it answers `/healthz`; `name` names its log.
    async fn start(
        control: &Path,
        url: &str,
        dir: &Path,
        preload: bool,
        name: &str,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join(format!("control-{name}.toml"));
        // Defaults everywhere (a 30 s heartbeat interval, written behind every 20th), but the
        // reconciler, which would only find these Agents' provider unconfigured, and
        // `/metrics`, read here on the API's own address.
        std::fs::write(
            &config,
            format!(
                "metrics_listen = \"127.0.0.1:{port}\"\n[reconciler]\ninterval_secs = 3600\n[agents]\npreload_credentials = {preload}\n"
            ),
        )?;
        let log = dir.join(format!("control-{name}.log"));
        let child = Command::new(control)
            .args(["--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--database",
                url,
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", control.display()))?;
        let mut server = Self {
            child,
            address: format!("127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if let Ok(mut stream) = TcpStream::connect(&server.address).await
                && let Ok((200, _)) = exchange(
                    &mut stream,
                    b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n",
                    &mut Vec::new(),
                )
                .await
            {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "control exited ({status}) before serving: {}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "control did not serve within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for control to log that its credentials are loaded; returns how long it says
    /// that took, in milliseconds.
    async fn wait_for_load(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            let log = std::fs::read_to_string(&self.log)?;
            if let Some(line) = log.lines().find(|line| line.contains(LOADED_LINE)) {
                return line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("millis=")?.parse().ok())
                    .with_context(|| format!("no millis in control's line {line:?}"));
            }
            ensure!(
                Instant::now() < deadline,
                "control did not log {LOADED_LINE:?} within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Control's peak resident set so far (`VmHWM`), in `KiB`.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    async fn metrics(&self) -> anyhow::Result<Metrics> {
        let mut stream = TcpStream::connect(&self.address).await?;
        let mut buffer = Vec::new();
        let (status, body) = exchange(
            &mut stream,
            b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n",
            &mut buffer,
        )
        .await?;
        ensure!(status == 200, "/metrics answered {status}");
        let text = String::from_utf8_lossy(&buffer[body..]).into_owned();
        let value = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse()
                        .ok()
                })
                .with_context(|| format!("no {name} in /metrics"))
        };
        Ok(Metrics {
            heartbeats: value("control_heartbeats_total")?,
            rows: value("control_liveness_rows_written_total")?,
            transitions: value("control_agent_transitions_total")?,
        })
    }

    /// SIGTERM, as an orderly shutdown; returns what control logged.
    fn stop(mut self) -> anyhow::Result<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("control did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(std::fs::read_to_string(&self.log)?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the load generator sends.
#[derive(Clone)]
enum Load {
    Healthz,
    /// Heartbeats, round-robin over the Agents.
    Heartbeats(Arc<Fleet>),
}

/// The simulated Agents, across phases: the k-th heartbeat of the run goes to Agent k mod N
/// with sequence number k / N + 1, so each Agent's sequence counts up as a vm-agent's does,
/// and its uptime counts from the fleet's boot.
struct Fleet {
    agents: Vec<Agent>,
    template: Template,
    sent: AtomicU64,
    boot: Instant,
}

/// What one phase measured.
#[derive(Default)]
struct Phase {
    done: u64,
    errors: u64,
    elapsed: Duration,
    /// Sorted, in microseconds.
    latencies: Vec<u32>,
    /// CPU time control spent meanwhile (all its threads).
    control_cpu: Duration,
    /// CPU time the load generator spent meanwhile.
    bench_cpu: Duration,
}

impl Phase {
    /// Adds another slice's answers to these (their rate then means nothing).
    fn absorb(&mut self, other: Phase) {
        self.done += other.done;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.control_cpu += other.control_cpu;
        self.bench_cpu += other.bench_cpu;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
    }

    /// Successful answers per second (refusals and errors do not count).
    fn rate(&self) -> f64 {
        (self.done - self.errors) as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU time per answer, in microseconds: control's and the load generator's.
    fn cpu_per_answer(&self) -> (f64, f64) {
        let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.done.max(1) as f64;
        (per(self.control_cpu), per(self.bench_cpu))
    }

    /// The `q` quantile of the latencies, in milliseconds.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[rank - 1]) / 1000.0
    }
}

/// The CPU time a process has spent so far, all its threads (`/proc/PID/task/*/schedstat`,
/// in nanoseconds); a thread that ended meanwhile is not counted, and the benchmark's
/// processes keep theirs.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .context("a schedstat without its CPU time")?;
    }
    Ok(Duration::from_nanos(nanos))
}

/// When a phase ends.
#[derive(Clone, Copy)]
enum Until {
    Elapsed(Duration),
    Sent(u64),
}

/// Keeps `connections` keep-alive connections busy, one request in flight on each, `until`.
async fn drive(
    address: &str,
    connections: usize,
    load: Load,
    until: Until,
) -> anyhow::Result<Phase> {
    let next = match &load {
        Load::Healthz => Arc::new(AtomicU64::new(0)),
        Load::Heartbeats(fleet) => Arc::new(AtomicU64::new(fleet.sent.load(Ordering::Relaxed))),
    };
    let total = match until {
        Until::Sent(count) => Some(next.load(Ordering::Relaxed) + count),
        Until::Elapsed(_) => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (load, next, stop) = (load.clone(), next.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            connection(stream, &load, &next, &stop, total).await
        }));
    }
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Until::Elapsed(duration) = until {
                tokio::time::sleep(duration).await;
                stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let mut phase = Phase::default();
    for worker in workers {
        let (latencies, errors) = worker.await??;
        phase.done += latencies.len() as u64;
        phase.errors += errors;
        phase.latencies.extend(latencies);
    }
    phase.elapsed = started.elapsed();
    timer.abort();
    if let Load::Heartbeats(fleet) = &load {
        fleet
            .sent
            .store(next.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    phase.latencies.sort_unstable();
    Ok(phase)
}

/// One connection's loop: its latencies (µs) and how many answers were not 200.
async fn connection(
    mut stream: TcpStream,
    load: &Load,
    next: &AtomicU64,
    stop: &AtomicBool,
    total: Option<u64>,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut request = Vec::with_capacity(2048);
    let mut body = Vec::with_capacity(1024);
    let mut buffer = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let k = next.fetch_add(1, Ordering::Relaxed);
        if total.is_some_and(|total| k >= total) {
            break;
        }
        request.clear();
        match load {
            Load::Healthz => {
                request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n");
            }
            Load::Heartbeats(fleet) => {
                let n = fleet.agents.len() as u64;
                let agent = &fleet.agents[usize::try_from(k % n)?];
                body.clear();
                fleet.template.render(
                    &mut body,
                    agent,
                    k / n + 1,
                    fleet.boot.elapsed().as_secs() + 60,
                );
                request.extend_from_slice(b"POST /api/agent/v1/heartbeat HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nAuthorization: Bearer ");
                request.extend_from_slice(agent.credential.as_bytes());
                request.extend_from_slice(
                    format!("\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                request.extend_from_slice(&body);
            }
        }
        let sent = Instant::now();
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(&mut stream, &request, &mut buffer),
        )
        .await
        .context("control did not answer within 10 s")??;
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        if status != 200 {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}

/// A heartbeat's JSON cut where it differs between heartbeats, so that the load generator,
/// which shares the cores with control, renders one by copying rather than serialising:
/// the bytes are the same as serde's (a test checks), and cheaper to make.
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Clone)]
enum Piece {
    Text(Vec<u8>),
    AgentId,
    BootId,
    Sequence,
    Uptime,
}

impl Template {
    const AGENT: &str = "agt_@AGENT@";
    const SEQUENCE: u64 = 987_654_321_987;
    const UPTIME: u64 = 123_456_789_123;

    fn new() -> anyhow::Result<Self> {
        let sample = Agent {
            id: Self::AGENT.to_owned(),
            credential: String::new(),
        };
        let text = serde_json::to_string(&heartbeat(&sample, Self::SEQUENCE, Self::UPTIME))?;
        let marks = [
            (format!("\"{}\"", Self::AGENT), Piece::AgentId),
            (format!("\"{}\"", &Self::AGENT[4..]), Piece::BootId),
            (Self::SEQUENCE.to_string(), Piece::Sequence),
            (Self::UPTIME.to_string(), Piece::Uptime),
        ];
        let mut pieces = Vec::new();
        let mut rest = text.as_str();
        while let Some((at, mark, piece)) = marks
            .iter()
            .filter_map(|(mark, piece)| rest.find(mark.as_str()).map(|at| (at, mark, piece)))
            .min_by_key(|(at, ..)| *at)
        {
            pieces.push(Piece::Text(rest.as_bytes()[..at].to_vec()));
            pieces.push(piece.clone());
            rest = &rest[at + mark.len()..];
        }
        pieces.push(Piece::Text(rest.as_bytes().to_vec()));
        Ok(Self { pieces })
    }

    /// Appends to `out` what `serde_json` makes of `heartbeat(agent, sequence, uptime_s)`.
    fn render(&self, out: &mut Vec<u8>, agent: &Agent, sequence: u64, uptime_s: u64) {
        use std::io::Write as _;
        for piece in &self.pieces {
            // Writing into a Vec cannot fail.
            let _ = match piece {
                Piece::Text(text) => std::io::Write::write_all(out, text),
                Piece::AgentId => write!(out, "\"{}\"", agent.id),
                Piece::BootId => write!(out, "\"{}\"", &agent.id[4..]),
                Piece::Sequence => write!(out, "{sequence}"),
                Piece::Uptime => write!(out, "{uptime_s}"),
            };
        }
    }
}

/// What a vm-agent sends: the kernel's boot id stands in as the Agent's own (stable per Agent).
fn heartbeat(agent: &Agent, sequence: u64, uptime_s: u64) -> Heartbeat {
    Heartbeat {
        agent_id: Some(agent.id.clone()),
        boot_id: agent.id[4..].to_owned(),
        sequence,
        agent_version: "0.1.0".to_owned(),
        image_version: "2026.11.0".to_owned(),
        agent_uptime_s: uptime_s,
        cloudflared: TunnelReport {
            state: TunnelState::Ready,
            ready_connections: 4,
            restarts: 0,
            crash_loop: false,
            last_exit: None,
            since: None,
        },
        slice: SliceReport {
            state: SliceState::Mounted,
            free_bytes: Some(40 << 30),
            total_bytes: Some(50 << 30),
            free_inodes: Some(3_000_000),
            total_inodes: Some(3_276_800),
        },
        host: HostMetrics {
            cpus: 2,
            load_centi: [12, 9, 7],
            memory_total_bytes: 4 << 30,
            memory_available_bytes: 3 << 30,
            root_free_bytes: 20 << 30,
            uptime_s,
        },
        clone: None,
    }
}

/// Sends one HTTP/1.1 request and reads its answer into `buffer`: the status and where the
/// body starts. Bodies are read by `Content-Length` (all control sends on these routes).
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> anyhow::Result<(u16, usize)> {
    stream.write_all(request).await?;
    buffer.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await?;
        ensure!(read > 0, "control closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = std::str::from_utf8(&buffer[..head_end])?;
    let status: u16 = head.get(9..12).context("no status line")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("an answer without Content-Length")?;
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await?;
        ensure!(read > 0, "control closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok((status, head_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_renders_what_serde_makes() {
        let template = Template::new().unwrap();
        let agent = Agent {
            id: control::ids::new_id("agt"),
            credential: String::new(),
        };
        for (sequence, uptime) in [(1, 60), (7, 0), (123_456, u64::MAX)] {
            let mut rendered = Vec::new();
            template.render(&mut rendered, &agent, sequence, uptime);
            let made = serde_json::to_vec(&heartbeat(&agent, sequence, uptime)).unwrap();
            assert_eq!(
                String::from_utf8(rendered).unwrap(),
                String::from_utf8(made).unwrap()
            );
        }
    }
}
