//! The kill -9 soak: a stream of provision, start, stop, transfer and destroy calls from a few
//! concurrent clients while `control` is sent SIGKILL at random moments (seeded, so a run can be
//! repeated) and started again; then every ledger invariant, `control audit verify`, and
//! exactly one vm-agent per running Agent (none for the others) are checked, and how long the
//! Agents busy at each kill took to finish their operation after the restart is measured.
//!
//! Bounded: a fixed number of kills, each wait bounded. Cleans up only what it started: its
//! `control` processes (by pid) and the VMs under its own data dir.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed soak

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::ledger as checker;
use test_support::{TestDb, workspace_bin};

use crate::{Api, KillVmsOnDrop, Replica, millis, start_control, vm_agents};

/// How long an operation may take to finish after the restart before the soak calls it stuck.
const STUCK: Duration = Duration::from_mins(2);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// PostgreSQL (two replicas, one killed at a time) instead of SQLite (one replica).
    pub postgres: bool,
    pub kills: usize,
    pub clients: usize,
    pub seed: u64,
}

/// What a run found. `violations` must be empty.
#[derive(Debug, Default)]
pub struct Figures {
    pub backend: String,
    pub seed: u64,
    /// Calls accepted (2xx), by kind.
    pub accepted: BTreeMap<String, usize>,
    /// Calls refused (4xx, such as 409 while another operation runs), by status.
    pub refused: BTreeMap<u16, usize>,
    /// Sends of a call again with its Idempotency-Key (connection lost, 5xx).
    pub retries: usize,
    pub kills: usize,
    /// Per restart: until the last Agent busy at the kill had finished its operation.
    pub lags: Vec<Duration>,
    pub agents: usize,
    pub violations: Vec<String>,
}

impl Figures {
    pub fn operations(&self) -> usize {
        self.accepted.values().sum::<usize>() + self.refused.values().sum::<usize>()
    }

    pub fn worst_lag(&self) -> Duration {
        self.lags.iter().copied().max().unwrap_or_default()
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "soak on {} (seed {})", self.backend, self.seed)?;
        writeln!(
            f,
            "  operations {} (accepted {:?}, refused by status {:?}), retries with the same key {}",
            self.operations(),
            self.accepted,
            self.refused,
            self.retries
        )?;
        let lags: Vec<String> = self
            .lags
            .iter()
            .map(|l| format!("{:.1}", l.as_secs_f64()))
            .collect();
        writeln!(
            f,
            "  kills {}, agents {}, ledger lag after each restart (s) [{}], worst {:.1} s",
            self.kills,
            self.agents,
            lags.join(", "),
            self.worst_lag().as_secs_f64()
        )?;
        write!(f, "  violations {}", self.violations.len())?;
        for violation in &self.violations {
            write!(f, "\n    {violation}")?;
        }
        Ok(())
    }
}

/// The replicas under test, on one data dir (the local provider's VMs live there).
struct Cluster {
    dir: tempfile::TempDir,
    args: Vec<String>,
    ports: Vec<u16>,
    replicas: Vec<Option<Replica>>,
    _db: Option<TestDb>,
}

impl Cluster {
    fn start(db: Option<TestDb>, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // control's default job lease (five minutes) and replica timeout (30 s): a dead
        // replica's jobs come back at once only because the restarted one knows it died.
        let (ports, args) = crate::replica_args(
            dir.path(),
            replicas,
            db.as_ref(),
            "replica_timeout_secs = 30",
        );
        let replicas = ports
            .iter()
            .map(|port| Some(start_control(&args, *port)))
            .collect();
        Self {
            dir,
            args,
            ports,
            replicas,
            _db: db,
        }
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// SIGKILLs replica `n`, waits for it to die, starts it again; returns when it listens.
    fn kill_and_restart(&mut self, n: usize) -> Instant {
        let replica = self.replicas[n].take().unwrap();
        replica.daemon.signal("-KILL");
        let (status, _) = replica.daemon.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "replica {n} was killed");
        self.replicas[n] = Some(start_control(&self.args, self.ports[n]));
        Instant::now()
    }

    fn stop(&mut self) {
        for replica in self.replicas.iter_mut().filter_map(Option::take) {
            let _ = replica.daemon.stop();
        }
    }
}

/// Runs the soak and returns its figures; a PostgreSQL run returns `None` without a server.
pub async fn run(options: &Options) -> Option<Figures> {
    let (db, replicas, backend) = if options.postgres {
        (Some(TestDb::postgres().await?), 2, "PostgreSQL, 2 replicas")
    } else {
        (None, 1, "SQLite")
    };
    let mut cluster = Cluster::start(db, replicas);
    let _vms = KillVmsOnDrop(cluster.data());
    let operator = std::fs::read_to_string(cluster.data().join("operator-token")).unwrap();
    let op = Api::new(&cluster.urls()[0], operator.trim());
    op.current_release("2026.12.0", json!({"local": "local-2026.12.0"}))
        .await;
    let accounts = vec![op.account("Acme").await, op.account("Globex").await];
    let figures = Arc::new(Mutex::new(Figures {
        backend: backend.to_owned(),
        seed: options.seed,
        ..Figures::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..options.clients)
        .map(|c| {
            let client = Client {
                n: c,
                urls: cluster.urls(),
                token: operator.trim().to_owned(),
                accounts: accounts.clone(),
                rng: fastrand::Rng::with_seed(options.seed.wrapping_add(c as u64 + 1)),
                figures: figures.clone(),
                stop: stop.clone(),
                seed: options.seed,
            };
            tokio::spawn(client.run())
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut lags = Vec::new();
    let mut violations = Vec::new();
    for _ in 0..options.kills {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..4_000))).await;
        let victim = rng.usize(..replicas);
        let busy = busy_agents(&op).await;
        let restarted = cluster.kill_and_restart(victim);
        let (lag, stuck) = until_finished(&op, &busy, restarted).await;
        lags.push(lag);
        violations.extend(stuck);
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    violations.extend(settle_and_check(&cluster, &op).await);
    cluster.stop();
    let mut figures = std::mem::take(&mut *figures.lock().unwrap());
    figures.kills = options.kills;
    figures.lags = lags;
    figures.violations.extend(violations);
    Some(figures)
}

/// GETs `path`, sent again while the replica is restarting or a pooled connection to the
/// killed process fails.
async fn look(op: &Api, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sent = op
            .client
            .get(format!("{}{path}", op.url))
            .bearer_auth(&op.token)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        if let Ok(response) = sent
            && response.status() == 200
            && let Ok(body) = response.json::<Value>().await
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: no answer within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every Agent the API knows, destroyed ones included.
async fn all_agents(op: &Api) -> Vec<Value> {
    let mut agents = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = op
            .get(&format!(
                "/api/agents?limit=200&include_destroyed=true{cursor}"
            ))
            .await;
        agents.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return agents,
        }
    }
}

/// The Agents with an operation under way, and which.
async fn busy_agents(op: &Api) -> HashMap<String, Value> {
    all_agents(op)
        .await
        .into_iter()
        .filter(|a| !a["operation"].is_null())
        .map(|a| (a["id"].as_str().unwrap().to_owned(), a["operation"].clone()))
        .collect()
}

/// Waits until every Agent in `busy` has finished the operation it had at the kill; returns
/// how long after `restarted` the last one did (zero if all had before), and the stuck ones.
async fn until_finished(
    op: &Api,
    busy: &HashMap<String, Value>,
    restarted: Instant,
) -> (Duration, Vec<String>) {
    let mut waiting: Vec<&String> = busy.keys().collect();
    while !waiting.is_empty() && restarted.elapsed() < STUCK {
        let mut still = Vec::new();
        for id in waiting {
            let view = look(op, &format!("/api/agents/{id}")).await;
            if view["operation"] == busy[id] {
                still.push(id);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stuck = waiting
        .iter()
        .map(|id| {
            format!(
                "agent {id}: {} still under way {STUCK:?} after the restart",
                busy[*id]
            )
        })
        .collect();
    (restarted.elapsed(), stuck)
}

/// Waits for every operation to finish, then checks the ledger, the audit chain and the VMs.
async fn settle_and_check(cluster: &Cluster, op: &Api) -> Vec<String> {
    let deadline = Instant::now() + STUCK;
    while !busy_agents(op).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut violations: Vec<String> = busy_agents(op)
        .await
        .into_iter()
        .map(|(id, operation)| format!("agent {id}: {operation} never finished"))
        .collect();
    violations.extend(vm_agent_violations(cluster, op).await);
    violations.extend(ledger_violations(op).await);
    let verify = Command::new(workspace_bin("control"))
        .args(&cluster.args)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    if !verify.status.success() {
        violations.push(format!(
            "control audit verify: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        ));
    }
    violations
}

/// Exactly one vm-agent per running Agent and none for the others, holding for a few seconds
/// (the local provider restarts a VM's vm-agent within a second or two, as systemd would).
async fn vm_agent_violations(cluster: &Cluster, op: &Api) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut steady = 0;
    loop {
        let mut wrong = Vec::new();
        for agent in all_agents(op).await {
            let id = agent["id"].as_str().unwrap();
            let want = usize::from(agent["state"] == "running");
            let found = vm_agents(&cluster.data(), id);
            if found.len() != want {
                wrong.push(format!(
                    "agent {id} ({}): {} vm-agents {found:?}, want {want}",
                    agent["state"],
                    found.len()
                ));
            }
        }
        steady = if wrong.is_empty() { steady + 1 } else { 0 };
        if steady == 10 || (!wrong.is_empty() && Instant::now() > deadline) {
            return wrong;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Tiling and attribution of every Agent's periods, transfers from the audit log included,
/// by the shared ledger checker.
async fn ledger_violations(op: &Api) -> Vec<String> {
    let mut snapshot = checker::Snapshot::default();
    for agent in all_agents(op).await {
        let id = agent["id"].as_str().unwrap();
        let resource = checker::Resource::agent(id);
        snapshot.lifetimes.push(checker::Lifetime {
            resource: resource.clone(),
            provisioned_at: millis(&agent["provisioned_at"]).unwrap(),
            destroyed_at: millis(&agent["destroyed_at"]),
        });
        let timeline = look(op, &format!("/api/agents/{id}/timeline")).await;
        for p in timeline["periods"].as_array().unwrap() {
            snapshot.periods.push(checker::Period {
                resource: resource.clone(),
                account: p["account_id"].as_str().unwrap().to_owned(),
                state: checker::State::parse(p["state"].as_str().unwrap()).unwrap(),
                started_at: millis(&p["started_at"]).unwrap(),
                ended_at: millis(&p["ended_at"]),
            });
        }
    }
    let mut cursor = String::new();
    loop {
        let page = look(op, &format!("/api/audit?limit=100{cursor}")).await;
        for event in page["items"].as_array().unwrap() {
            if event["action"] == "agent.transfer" {
                snapshot.transfers.push(checker::Transfer {
                    resource: checker::Resource::agent(event["resource_id"].as_str().unwrap()),
                    at: millis(&event["at"]).unwrap(),
                    from: event["account_id"].as_str().unwrap().to_owned(),
                    to: event["to_account_id"].as_str().unwrap().to_owned(),
                });
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    checker::check(&snapshot, None)
}

/// One client: provisions a few Agents and runs random lifecycle calls on them, each sent
/// again with its Idempotency-Key until it gets an answer other than a lost connection or a
/// 5xx.
struct Client {
    n: usize,
    urls: Vec<String>,
    token: String,
    accounts: Vec<String>,
    rng: fastrand::Rng,
    figures: Arc<Mutex<Figures>>,
    stop: Arc<AtomicBool>,
    seed: u64,
}

impl Client {
    async fn run(mut self) {
        let mut mine: Vec<String> = Vec::new();
        let mut call = 0;
        while !self.stop.load(Ordering::SeqCst) {
            call += 1;
            let key = format!("soak-{}-{}-{call}", self.seed, self.n);
            let account = self.accounts[self.rng.usize(..self.accounts.len())].clone();
            let (kind, method, path, body) = if mine.len() < 2 {
                let name = format!("soak-{}-{call}", self.n);
                let body = json!({"name": name, "account_id": account});
                (
                    "provision",
                    reqwest::Method::POST,
                    "/api/agents".to_owned(),
                    body,
                )
            } else {
                let id = mine[self.rng.usize(..mine.len())].clone();
                match self.rng.u8(..10) {
                    0..=3 => (
                        "start",
                        reqwest::Method::POST,
                        format!("/api/agents/{id}/start"),
                        json!({}),
                    ),
                    4..=7 => (
                        "stop",
                        reqwest::Method::POST,
                        format!("/api/agents/{id}/stop"),
                        json!({}),
                    ),
                    8 => (
                        "transfer",
                        reqwest::Method::POST,
                        format!("/api/agents/{id}/transfer"),
                        json!({"to_account": account}),
                    ),
                    _ => (
                        "destroy",
                        reqwest::Method::DELETE,
                        format!("/api/agents/{id}"),
                        Value::Null,
                    ),
                }
            };
            let (status, reply) = self.send(method, &path, &body, &key).await;
            self.record(kind, status, &reply, &path, &mut mine);
            tokio::time::sleep(Duration::from_millis(self.rng.u64(50..300))).await;
        }
    }

    /// Counts an answered call; remembers an Agent it provisioned, forgets one it destroyed.
    fn record(&self, kind: &str, status: u16, reply: &Value, path: &str, mine: &mut Vec<String>) {
        let mut figures = self.figures.lock().unwrap();
        if (200..300).contains(&status) {
            *figures.accepted.entry(kind.to_owned()).or_default() += 1;
            if kind == "provision" {
                mine.push(reply["id"].as_str().unwrap().to_owned());
                figures.agents += 1;
            } else if kind == "destroy" {
                mine.retain(|id| !path.ends_with(id.as_str()));
            }
        } else {
            *figures.refused.entry(status).or_default() += 1;
        }
    }

    /// Sends the call to a random replica until one answers with other than a 5xx.
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        key: &str,
    ) -> (u16, Value) {
        let client = test_support::http_client();
        let deadline = Instant::now() + STUCK;
        loop {
            let url = &self.urls[self.rng.usize(..self.urls.len())];
            let mut request = client
                .request(method.clone(), format!("{url}{path}"))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .timeout(Duration::from_secs(20));
            if !body.is_null() {
                request = request.json(body);
            }
            if let Ok(response) = request.send().await {
                let status = response.status().as_u16();
                if let Ok(text) = response.text().await
                    && (status < 500 || Instant::now() > deadline)
                {
                    return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
                }
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {method} {path} within {STUCK:?}"
            );
            self.figures.lock().unwrap().retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
