//! What the end-to-end tests in `tests/` share beyond `test-support`: running `control`
//! replicas, talking to their API, and finding the local provider's VMs among the processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

pub mod soak;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::ledger as checker;
use test_support::{Daemon, workspace_bin};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// One `control serve` process.
#[derive(Debug)]
pub struct Replica {
    pub daemon: Daemon,
    pub url: String,
    pub port: u16,
}

impl Replica {
    /// Waits up to `within` for this replica to stop at the failpoint it was started with
    /// (`control/src/failpoint.rs` logs that it reached it, then parks until killed).
    pub fn wait_for_failpoint(&self, within: Duration) {
        self.daemon.wait_until("the failpoint", within, || {
            self.daemon.log().contains("failpoint reached")
        });
    }
}

/// Starts `control serve` on `port` with `args` before the subcommand (config, data dir,
/// database), logging at INFO.
pub fn start_control(args: &[String], port: u16) -> Replica {
    start_control_with(args, port, &[])
}

/// [`start_control`] with extra environment variables (a failpoint).
pub fn start_control_with(args: &[String], port: u16, env: &[(&str, &str)]) -> Replica {
    let mut command = Command::new(workspace_bin("control"));
    // Replicas run side by side: `/metrics` on a port of its own, not the default one (an
    // `env` entry may still name one).
    command.env("CONTROL_METRICS_LISTEN", "127.0.0.1:0");
    command.envs(env.iter().copied());
    command
        .args(args)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("CONTROL_DATABASE")
        .env_remove("CONTROL_DATA_DIR")
        .env_remove("CONTROL_CONFIG")
        .env("RUST_LOG", "info");
    Replica {
        daemon: Daemon::start(command, port),
        url: format!("http://127.0.0.1:{port}"),
        port,
    }
}

/// Writes the configuration the end-to-end tests run control with: fast heartbeats, health
/// judgements, reconciler, rollup, audit checkpoints and job polling, local VMs running the workspace's vm-agent
/// and stand-in cloudflared and reporting to `control_urls`, and job leases of
/// `job_lease_secs` (the default when `None`). Returns the file's path.
pub fn write_control_config(
    dir: &Path,
    control_urls: &[String],
    job_lease_secs: Option<u64>,
) -> PathBuf {
    write_control_config_with(dir, control_urls, job_lease_secs, "", "")
}

/// [`write_control_config`] with `agents` keys added to its `[agents]` section and `extra`
/// TOML (whole sections) at the end.
pub fn write_control_config_with(
    dir: &Path,
    control_urls: &[String],
    job_lease_secs: Option<u64>,
    agents: &str,
    extra: &str,
) -> PathBuf {
    let urls: Vec<String> = control_urls.iter().map(|u| format!("\"{u}\"")).collect();
    let lease = job_lease_secs.map_or(String::new(), |s| format!("lease_secs = {s}\n"));
    let path = dir.join("control.toml");
    // Short, unless `agents` sets it.
    let replica_timeout = if agents.contains("replica_timeout_secs") {
        ""
    } else {
        "replica_timeout_secs = 3\n"
    };
    std::fs::write(
        &path,
        format!(
            r#"[agents]
heartbeat_interval_secs = 1
unhealthy_after_intervals = 3
{replica_timeout}agent_backoff_max_secs = 10
{agents}

[reconciler]
interval_secs = 2

[usage]
rollup_interval_secs = 2

[audit]
checkpoint_interval_secs = 2

[jobs]
poll_interval_ms = 200
{lease}
[local_provider]
vm_agent = "{vm_agent}"
cloudflared = "{cloudflared}"
control_urls = [{urls}]
{extra}"#,
            vm_agent = workspace_bin("vm-agent").display(),
            cloudflared = workspace_bin("stand-in-cloudflared").display(),
            urls = urls.join(", "),
        ),
    )
    .unwrap();
    path
}

/// `replicas` free ports on loopback and the arguments every `control` command of those
/// replicas takes: the configuration [`write_control_config_with`] writes in `dir` (each local
/// VM reporting to one of them, the default job lease, `agents` added to `[agents]`), the data
/// dir `dir/data`, and `db`'s URL when there is one (else SQLite in the data dir).
pub fn replica_args(
    dir: &Path,
    replicas: usize,
    db: Option<&test_support::TestDb>,
    agents: &str,
) -> (Vec<u16>, Vec<String>) {
    let ports: Vec<u16> = (0..replicas).map(|_| test_support::free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let config = write_control_config_with(dir, &urls, None, agents, "");
    let args = control_args(&config, &dir.join("data"), db.map(|db| db.url.as_str()));
    (ports, args)
}

/// The arguments every `control` command takes: its configuration file, its data dir and, when
/// given, its database URL (else SQLite in the data dir).
pub fn control_args(config: &Path, data: &Path, database: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ];
    if let Some(database) = database {
        args.extend(["--database".to_owned(), database.to_owned()]);
    }
    args
}

/// A JSON API client with a bearer token.
#[derive(Clone, Debug)]
pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    pub fn new(url: &str, token: &str) -> Self {
        Self {
            client: test_support::http_client(),
            url: url.to_owned(),
            token: token.to_owned(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body:#}");
        body
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "POST {path}: {status} {reply:#}"
        );
        reply
    }

    /// Registers release `version` with the provider references `refs` and makes it current
    /// (operator); returns the image's id.
    pub async fn current_release(&self, version: &str, refs: Value) -> String {
        let image = self
            .post(
                "/api/images",
                serde_json::json!({"version": version, "agent_version": "0.1.0",
                       "manifest_digest": format!("sha256:{}", "3".repeat(64)),
                       "refs": refs, "env": {}}),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                "/api/images/current",
                Some(serde_json::json!({"image_id": image})),
            )
            .await;
        assert_eq!(status, 200, "PUT /api/images/current: {body:#}");
        image
    }

    /// Creates account `name` (operator); returns its id.
    pub async fn account(&self, name: &str) -> String {
        self.post("/api/accounts", serde_json::json!({"name": name}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Polls `condition` every 100 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every live process (zombies left out) with its arguments.
fn processes() -> Vec<(u32, Vec<String>)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            let args = cmdline
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            (!zombie).then_some((pid, args))
        })
        .collect()
}

/// Processes whose command line mentions `dir`: the local provider's VMs of one test.
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    processes()
        .into_iter()
        .map(|(pid, args)| (pid, args.join(" ")))
        .filter(|(_, cmdline)| cmdline.contains(&needle))
        .collect()
}

/// The live vm-agent processes of the local VM `agent` under the data dir `data`, found by
/// their command line (`vm-agent run --config <data>/local-vms/<agent>/root/etc/vm-agent/agent.toml`,
/// the file its document delivered, as the local provider starts them; `<agent>/agent.toml`
/// for a VM an earlier release laid out), never by the pid the provider recorded: so a
/// process the provider believes stopped is still seen, and no other test's VMs ever match.
pub fn vm_agents(data: &Path, agent: &str) -> Vec<u32> {
    let vm_dir = data.join("local-vms").join(agent);
    let configs = [
        vm_dir.join("root/etc/vm-agent/agent.toml"),
        vm_dir.join("agent.toml"),
    ]
    .map(|path| path.display().to_string());
    processes()
        .into_iter()
        .filter(|(_, args)| {
            args.first()
                .is_some_and(|program| Path::new(program).ends_with("vm-agent"))
                && configs.iter().any(|config| {
                    args.ends_with(&["run".to_owned(), "--config".to_owned(), config.clone()])
                })
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Kills every process of one test's VMs when dropped, so no test leaves VMs behind.
#[derive(Debug)]
pub struct KillVmsOnDrop(pub PathBuf);

impl Drop for KillVmsOnDrop {
    fn drop(&mut self) {
        // Again while any is left: a vm-agent may have started its cloudflared after the list
        // was read.
        for _ in 0..10 {
            let left = processes_under(&self.0);
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An API timestamp (RFC 3339) in milliseconds since the epoch.
pub fn millis(text: &Value) -> Option<i64> {
    let parsed = time::OffsetDateTime::parse(
        text.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The periods of the Agents as the API shows them, checked for tiling and attribution by the
/// shared ledger checker.
pub async fn ledger_holds(op: &Api, agents: &[&str], context: &str) {
    let mut snapshot = checker::Snapshot::default();
    for id in agents {
        let v = op.get(&format!("/api/agents/{id}")).await;
        snapshot.lifetimes.push(checker::Lifetime {
            resource: checker::Resource::agent(id),
            provisioned_at: millis(&v["provisioned_at"]).unwrap(),
            destroyed_at: millis(&v["destroyed_at"]),
        });
        let timeline = op.get(&format!("/api/agents/{id}/timeline")).await;
        for p in timeline["periods"].as_array().unwrap() {
            snapshot.periods.push(checker::Period {
                resource: checker::Resource::agent(id),
                account: p["account_id"].as_str().unwrap().to_owned(),
                state: checker::State::parse(p["state"].as_str().unwrap()).unwrap(),
                started_at: millis(&p["started_at"]).unwrap(),
                ended_at: millis(&p["ended_at"]),
            });
        }
    }
    checker::assert_none(&checker::check(&snapshot, None), context);
}
