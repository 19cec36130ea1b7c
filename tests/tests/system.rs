//! The whole system on one machine: real `control` replicas and the local provider's real
//! vm-agents (with the stand-in cloudflared), driven through the API the way the dashboard
//! drives it, including a hung VM, a killed agent and a control restart, then checked against
//! the ledger's invariants. On SQLite, on PostgreSQL, and on PostgreSQL with two replicas that
//! the agents heartbeat to in turn. The ledger read over HTTP (timelines, usage, the audit log's
//! transfers) is checked by the shared checker, `test_support::ledger`, before and after every
//! Agent is destroyed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // the test compares with the wall clock the binaries use

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::{Api, KillVmsOnDrop, Replica, eventually, processes_under, start_control, vm_agents};
use serde_json::{Value, json};
use test_support::ledger::{
    self as checker, Day, Kind, Lifetime, Period, Resource, RolledUp, Snapshot, State, Transfer,
    Usage,
};
use test_support::{TestDb, workspace_bin};

const WITHIN: Duration = Duration::from_secs(30);

/// How long before `control usage rollup` starts a background rollup (every 2 s on each
/// replica) may have begun and still write its rows after it: the rows read next count up to
/// an instant no earlier than that.
const ROLLUP_MARGIN_MS: i64 = 5_000;

/// The instants of a period, in milliseconds.
fn millis(text: &Value) -> Option<i64> {
    let text = text.as_str()?;
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

/// The one vm-agent process running for `agent`, seen among the real processes.
fn vm_agent_pid(data: &Path, agent: &str) -> Option<u32> {
    let pids = vm_agents(data, agent);
    assert!(
        pids.len() <= 1,
        "several vm-agents run for {agent}: {pids:?}"
    );
    pids.first().copied()
}

fn signal(pid: u32, signal: &str) {
    assert!(
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

struct System {
    dir: tempfile::TempDir,
    args: Vec<String>,
    ports: Vec<u16>,
    replicas: Vec<Option<Replica>>,
    _db: Option<TestDb>,
}

impl System {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    fn start(db: Option<TestDb>, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ports, args) = e2e::replica_args(dir.path(), replicas, db.as_ref(), "");
        let mut system = Self {
            dir,
            args,
            ports,
            replicas: Vec::new(),
            _db: db,
        };
        for n in 0..replicas {
            let replica = start_control(&system.args, system.ports[n]);
            system.replicas.push(Some(replica));
        }
        system
    }

    fn url(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[n])
    }

    /// Stops replica `n` (SIGTERM) and starts it again on the same port.
    fn restart(&mut self, n: usize) -> String {
        let replica = self.replicas[n].take().unwrap();
        let (status, log) = replica.daemon.stop();
        assert!(status.success(), "{log}");
        self.replicas[n] = Some(start_control(&self.args, self.ports[n]));
        log
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .flatten()
            .map(|r| r.daemon.log())
            .collect()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (n, replica) in self.replicas.iter().enumerate() {
                if let Some(replica) = replica {
                    eprintln!("--- control replica {n} log ---\n{}", replica.daemon.log());
                }
            }
        }
    }
}

async fn agent(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/agents/{id}")).await
}

/// Runs `control usage rollup` beside the replicas and returns the earliest instant the usage
/// rows read after it can count up to.
fn roll_up(system: &System) -> i64 {
    let started = now_ms();
    let status = Command::new(workspace_bin("control"))
        .args(&system.args)
        .args(["usage", "rollup"])
        .status()
        .unwrap();
    assert!(status.success());
    started - ROLLUP_MARGIN_MS
}

/// The ledger as the API shows it to an operator: the Agents' lifetimes and timelines, every
/// day's usage since the first was provisioned, and the transfers in the audit log. The usage
/// rows count up to an instant between `counted_from` and the moment they were read.
async fn read_ledger(op: &Api, agents: &[String], counted_from: i64) -> Snapshot {
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    let mut snapshot = Snapshot::default();
    for id in agents {
        let view = agent(op, id).await;
        let resource = Resource::agent(id);
        snapshot.lifetimes.push(Lifetime {
            resource: resource.clone(),
            provisioned_at: millis(&view["provisioned_at"]).unwrap(),
            destroyed_at: millis(&view["destroyed_at"]),
        });
        let timeline = op.get(&format!("/api/agents/{id}/timeline")).await;
        for period in timeline["periods"].as_array().unwrap() {
            snapshot.periods.push(Period {
                resource: resource.clone(),
                account: text(&period["account_id"]),
                state: State::parse(period["state"].as_str().unwrap()).unwrap(),
                started_at: millis(&period["started_at"]).unwrap(),
                ended_at: millis(&period["ended_at"]),
            });
        }
    }
    let first = snapshot
        .lifetimes
        .iter()
        .map(|l| Day::of(l.provisioned_at))
        .min()
        .unwrap();
    let usage = op
        .get(&format!("/api/usage?from={first}&to={}", Day::of(now_ms())))
        .await;
    let read_at = now_ms();
    for row in usage["rows"].as_array().unwrap() {
        let kind = Kind::parse(row["resource_kind"].as_str().unwrap()).unwrap();
        snapshot.usage.push(Usage {
            day: Day::parse(row["day"].as_str().unwrap()).unwrap(),
            resource: Resource::new(kind, row["resource_id"].as_str().unwrap()),
            account: text(&row["account_id"]),
            running_s: row["running_s"].as_i64().unwrap(),
            paused_s: row["paused_s"].as_i64().unwrap(),
        });
    }
    snapshot.rolled_up = Some(RolledUp {
        earliest: counted_from,
        latest: read_at,
    });
    let mut cursor = String::new();
    loop {
        let page = op.get(&format!("/api/audit?limit=100{cursor}")).await;
        for event in page["items"].as_array().unwrap() {
            if event["action"].as_str().unwrap().ends_with(".transfer") {
                let kind = Kind::parse(event["resource_kind"].as_str().unwrap()).unwrap();
                snapshot.transfers.push(Transfer {
                    resource: Resource::new(kind, event["resource_id"].as_str().unwrap()),
                    at: millis(&event["at"]).unwrap(),
                    from: text(&event["account_id"]),
                    to: text(&event["to_account_id"]),
                });
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    snapshot
}

async fn the_system_runs_end_to_end(db: Option<TestDb>, replicas: usize) {
    let mut system = System::start(db, replicas);
    let data = system.data();
    let _cleanup = KillVmsOnDrop(system.dir.path().to_owned());
    let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
    let op = Api::new(&system.url(0), operator.trim());
    // The dashboard reaches either replica.
    let op_other = Api::new(&system.url(replicas - 1), operator.trim());

    let image = op
        .post(
            "/api/images",
            json!({"version": "2026.11.0", "agent_version": "0.1.0",
                   "manifest_digest": format!("sha256:{}", "0".repeat(64)), "refs": {"local": "local-2026.11.0"}}),
        )
        .await;
    let (status, _) = op
        .call(
            reqwest::Method::PUT,
            "/api/images/current",
            Some(json!({"image_id": image["id"]})),
        )
        .await;
    assert_eq!(status, 200);
    let acme = op.post("/api/accounts", json!({"name": "Acme"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let globex = op.post("/api/accounts", json!({"name": "Globex"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = op
        .post(&format!("/api/accounts/{acme}/tokens"), json!({}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let acme_api = Api::new(&system.url(replicas - 1), &token);

    // Three Agents, each a real vm-agent heartbeating into a running period.
    let mut agents = Vec::new();
    for name in ["stopped", "hung", "killed"] {
        let accepted = acme_api.post("/api/agents", json!({"name": name})).await;
        agents.push(accepted["id"].as_str().unwrap().to_owned());
    }
    for id in &agents {
        eventually("the agent running and heartbeating", WITHIN, || async {
            let view = agent(&op, id).await;
            view["state"] == "running" && view["healthy"] == true
        })
        .await;
        assert!(
            vm_agent_pid(&data, id).is_some(),
            "a vm-agent runs for {id}"
        );
    }
    let [stopped, hung, killed] = [agents[0].clone(), agents[1].clone(), agents[2].clone()];

    // Stop one: its agent ends, the Agent is paused.
    acme_api
        .post(&format!("/api/agents/{stopped}/stop"), json!({}))
        .await;
    eventually("the stop", WITHIN, || async {
        agent(&op, &stopped).await["state"] == "paused"
    })
    .await;
    // Among the real processes, not by the pid the local provider recorded (which it forgets
    // even when the kill failed): its vm-agent, and whatever ran for its VM, are gone.
    eventually("its vm-agent gone", WITHIN, || async {
        vm_agent_pid(&data, &stopped).is_none()
    })
    .await;
    assert_eq!(
        processes_under(&data.join("local-vms").join(&stopped)),
        [],
        "nothing runs for the stopped VM"
    );

    // A hung VM: its agent frozen. Unhealthy after three silent intervals; no period changes.
    let pid = vm_agent_pid(&data, &hung).unwrap();
    let periods_before = op.get(&format!("/api/agents/{hung}/timeline")).await["periods"].clone();
    signal(pid, "-STOP");
    eventually("the hung agent flagged unhealthy", WITHIN, || async {
        agent(&op_other, &hung).await["healthy"] == false
    })
    .await;
    assert_eq!(
        agent(&op, &hung).await["state"],
        "running",
        "a flag, not a period change"
    );
    assert_eq!(
        op.get(&format!("/api/agents/{hung}/timeline")).await["periods"],
        periods_before
    );
    signal(pid, "-CONT");
    eventually("the hung agent healthy again", WITHIN, || async {
        agent(&op, &hung).await["healthy"] == true
    })
    .await;

    // A killed agent: the local provider starts it again, as systemd's Restart=always would.
    let pid = vm_agent_pid(&data, &killed).unwrap();
    signal(pid, "-KILL");
    eventually("a new vm-agent for the killed one", WITHIN, || async {
        vm_agent_pid(&data, &killed).is_some_and(|new| new != pid)
    })
    .await;
    assert_eq!(agent(&op, &killed).await["state"], "running");

    // control restarts: nothing orphaned, nothing duplicated, every Agent reports again.
    let log = system.restart(0);
    assert!(log.contains("local VMs keep running"), "{log}");
    let running = |data: &Path| {
        processes_under(data)
            .into_iter()
            // By program: a VM's cloudflared runs `tunnel run` with its token file under
            // /etc/vm-agent/, so its command line names vm-agent too.
            .filter(|(_, cmd)| {
                cmd.split(' ')
                    .next()
                    .is_some_and(|program| program.ends_with("/vm-agent"))
                    && cmd.contains(" run ")
            })
            .count()
    };
    assert_eq!(
        running(&data),
        2,
        "the hung and the killed Agents' agents, once each"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(running(&data), 2, "still once each after the restart");
    for id in [&hung, &killed] {
        eventually("heartbeats after the restart", WITHIN, || async {
            agent(&op, id).await["healthy"] == true
        })
        .await;
    }

    // Transfer one, destroy one.
    let moved = op
        .post(
            &format!("/api/agents/{hung}/transfer"),
            json!({"to_account": globex}),
        )
        .await;
    assert_eq!(moved["account_id"], globex.as_str());
    let (status, _) = acme_api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/agents/{killed}"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    eventually("the destroy", WITHIN, || async {
        agent(&op, &killed).await["state"] == "destroyed"
    })
    .await;
    assert!(
        processes_under(&data.join("local-vms").join(&killed)).is_empty(),
        "the destroyed VM's agent is gone"
    );
    assert!(
        !data.join("local-vms").join(&killed).exists(),
        "the VM's files are removed"
    );

    // Start the stopped one: a new vm-agent, running and heartbeating again.
    acme_api
        .post(&format!("/api/agents/{stopped}/start"), json!({}))
        .await;
    eventually("the start", WITHIN, || async {
        let view = agent(&op, &stopped).await;
        view["state"] == "running" && view["operation"].is_null() && view["healthy"] == true
    })
    .await;
    assert!(
        vm_agent_pid(&data, &stopped).is_some(),
        "a vm-agent runs again for {stopped}"
    );
    let stopped_timeline: Vec<Value> =
        op.get(&format!("/api/agents/{stopped}/timeline")).await["periods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["state"].clone())
            .collect();
    assert_eq!(stopped_timeline, ["paused", "running", "paused", "running"]);

    // The ledger: tiling, attribution at the transfer, conservation, survival, the audit chain.
    // Rolled up first: the usage counts up to the rollup, the lifetimes up to a moment later.
    let counted_from = roll_up(&system);
    let live = read_ledger(&op, &agents, counted_from).await;
    checker::assert_none(
        &checker::check(&live, None),
        "after the stop, the transfer, the destroy and the start",
    );
    let hung_resource = Resource::agent(&hung);
    let accounts: Vec<&str> = live
        .periods
        .iter()
        .filter(|p| p.resource == hung_resource)
        .map(|p| p.account.as_str())
        .collect();
    assert_eq!(accounts.last(), Some(&globex.as_str()));
    assert!(
        accounts.contains(&acme.as_str()),
        "Acme keeps its periods before the transfer"
    );
    assert_eq!(live.transfers.len(), 1, "{:?}", live.transfers);
    // From the first day: a run across midnight UTC has rows on two days.
    let hung_accounts: BTreeSet<&str> = live
        .usage
        .iter()
        .filter(|r| r.resource == hung_resource)
        .map(|r| r.account.as_str())
        .collect();
    assert_eq!(
        hung_accounts,
        [acme.as_str(), globex.as_str()].into_iter().collect(),
        "the transferred Agent's usage is split between the accounts"
    );

    let verdict = op.get("/api/audit/verify").await;
    assert_eq!(verdict["ok"], true, "{verdict:#}");
    let audit = op.get("/api/audit?limit=100").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "agent.provision",
        "agent.stop",
        "agent.start",
        "agent.transfer",
        "agent.destroy",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }

    // What a support engineer finds in control's log.
    let logs = system.logs();
    for line in [
        "agent registered",
        "agent unhealthy",
        "agent healthy again",
        "started it again",
    ] {
        assert!(
            logs.contains(line) || log.contains(line),
            "`{line}` in control's logs"
        );
    }

    // Clean up: destroy the rest; no VM is left behind.
    for id in [&stopped, &hung] {
        let (status, _) = op
            .call(reqwest::Method::DELETE, &format!("/api/agents/{id}"), None)
            .await;
        assert_eq!(status, 202);
    }
    for id in [&stopped, &hung] {
        eventually("the destroy", WITHIN, || async {
            agent(&op, id).await["state"] == "destroyed"
        })
        .await;
    }
    assert!(
        processes_under(&data)
            .iter()
            .all(|(_, cmd)| !cmd.contains("vm-agent")),
        "no vm-agent is left"
    );

    // Destroyed: every period, transfer and final day's usage survives, the usage covers the
    // whole lives, and two rollups give the same rows. Rolled up once no background rollup
    // that began before the last destroy can still write, so the rows are exact.
    tokio::time::sleep(Duration::from_millis(ROLLUP_MARGIN_MS.unsigned_abs())).await;
    let counted_from = roll_up(&system);
    let destroyed = read_ledger(&op, &agents, counted_from).await;
    assert!(
        destroyed
            .lifetimes
            .iter()
            .all(|l| l.destroyed_at.is_some_and(|at| at <= counted_from)),
        "every lifetime ends before the rollup window: {:?}",
        destroyed.lifetimes
    );
    checker::assert_none(
        &checker::check(&destroyed, Some(&live)),
        "after every Agent is destroyed",
    );
    let counted_from = roll_up(&system);
    let again = read_ledger(&op, &agents, counted_from).await;
    checker::assert_none(
        &checker::same_rollup(&destroyed.usage, &again.usage),
        "rolling up twice",
    );
    chain_holds_its_newest_checkpoint(&system, &op).await;
}

/// A live replica signs the chain's head (every 2 s here) once no more events come, logs the checkpoint at INFO and lists it;
/// kept in a file, it verifies against the chain.
async fn chain_holds_its_newest_checkpoint(system: &System, op: &Api) {
    let head = op.get("/api/audit/verify").await["events_checked"].clone();
    eventually("a checkpoint of the whole chain", WITHIN, || async {
        op.get("/api/audit/checkpoints?limit=1").await["items"][0]["seq"] == head
    })
    .await;
    let newest = op.get("/api/audit/checkpoints?limit=1").await["items"][0].clone();
    let logged = system.replicas.iter().flatten().any(|r| {
        r.daemon.log().lines().any(|line| {
            line.contains("audit checkpoint signed")
                && line.contains(newest["hash"].as_str().unwrap())
        })
    });
    assert!(logged, "the checkpoint {newest} is in a replica's log");
    let file = system.dir.path().join("checkpoint.json");
    std::fs::write(&file, newest.to_string()).unwrap();
    let verify = Command::new(workspace_bin("control"))
        .args(&system.args)
        .args(["audit", "verify", "--checkpoint"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && stdout.contains("it holds every event of the checkpoint"),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite() {
    the_system_runs_end_to_end(None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres() {
    if let Some(db) = TestDb::postgres().await {
        the_system_runs_end_to_end(Some(db), 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_with_two_replicas() {
    if let Some(db) = TestDb::postgres().await {
        the_system_runs_end_to_end(Some(db), 2).await;
    }
}
