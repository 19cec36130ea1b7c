//! `control serve` killed (SIGKILL) in the window between a provider accepting a call and
//! control recording the answer, at every provider call of the provisioning job: the Hetzner
//! and Cloudflare fakes (in this process) take the call's effect at once and hold the answer
//! back, the test kills control while they hold it, starts it again, and checks that the
//! Agent ends running with exactly one server, firewall, volume, tunnel and DNS record — on
//! SQLite and on PostgreSQL; and, on PostgreSQL, that with two replicas the survivor finishes
//! the job the killed one began. The same for a Plain VM at each of its provisioning calls:
//! exactly one server and one firewall at the end, the firewall applied to the server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use e2e::{Api, Replica, eventually, start_control, write_control_config_with};
use provider_fakes::cloudflare::{self as cf, CloudflareFake};
use provider_fakes::hetzner::{self as hz, HetznerFake, Method};
use serde_json::json;
use test_support::{TestDb, free_port};

#[derive(Clone, Copy, Debug)]
enum Fake {
    Hetzner,
    Cloudflare,
}

/// Every provider call of the provisioning job that makes something (or, for `running`, reads
/// the server's state), with its step.
const CALLS: &[(&str, Fake, &str, &str)] = &[
    (
        "tunnel",
        Fake::Cloudflare,
        "POST",
        "/client/v4/accounts/{account_id}/cfd_tunnel",
    ),
    (
        "tunnel",
        Fake::Cloudflare,
        "PUT",
        "/client/v4/accounts/{account_id}/cfd_tunnel/{tunnel_id}/configurations",
    ),
    (
        "tunnel",
        Fake::Cloudflare,
        "POST",
        "/client/v4/zones/{zone_id}/dns_records",
    ),
    ("firewall", Fake::Hetzner, "POST", "/v1/firewalls"),
    ("volume", Fake::Hetzner, "POST", "/v1/volumes"),
    ("server", Fake::Hetzner, "POST", "/v1/servers"),
    ("running", Fake::Hetzner, "GET", "/v1/servers/{id}"),
];

/// Every provider call of a Plain VM's provisioning job that makes something (or reads the
/// server's state), with its step.
const PLAIN_VM_CALLS: &[(&str, &str, &str)] = &[
    ("firewall", "POST", "/v1/firewalls"),
    ("server", "POST", "/v1/servers"),
    ("running", "GET", "/v1/servers/{id}"),
];

/// A Vault key for the Plain VMs.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice";

struct Rig {
    hetzner: HetznerFake,
    cloudflare: CloudflareFake,
    args: Vec<String>,
    url: String,
    port: u16,
}

async fn rig(dir: &Path, db: Option<&TestDb>, replicas: &[u16]) -> Rig {
    let hetzner = HetznerFake::start(hz::Options {
        action_delay: Duration::from_millis(20),
        ..hz::Options::default()
    })
    .await
    .unwrap();
    let cloudflare = CloudflareFake::start(cf::Options::default()).await.unwrap();
    let hetzner_token = dir.join("hetzner-token");
    std::fs::write(&hetzner_token, hetzner.token()).unwrap();
    let cloudflare_token = dir.join("cloudflare-token");
    std::fs::write(&cloudflare_token, cloudflare.token()).unwrap();
    let urls: Vec<String> = replicas
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    // A short lease: a restarted control is a new replica and takes the dead one's job over
    // once its lease is out.
    let config = write_control_config_with(
        dir,
        &urls,
        Some(2),
        &format!(
            "domain = \"{}\"\ncontrol_url = \"{}\"",
            cloudflare.zone_name(),
            urls[0]
        ),
        &format!(
            "\n[providers]\ndefault = \"hetzner\"\ntunnels = \"cloudflare\"\n\n\
             [hetzner]\ntoken_file = \"{}\"\nbase_url = \"{}\"\n\n\
             [cloudflare]\ntoken_file = \"{}\"\nbase_url = \"{}\"\n\
             account_id = \"{}\"\nzone_id = \"{}\"\n",
            hetzner_token.display(),
            hetzner.url(),
            cloudflare_token.display(),
            cloudflare.url(),
            cloudflare.account_id(),
            cloudflare.zone_id(),
        ),
    );
    let args = e2e::control_args(&config, &dir.join("data"), db.map(|db| db.url.as_str()));
    Rig {
        hetzner,
        cloudflare,
        args,
        url: urls[0].clone(),
        port: replicas[0],
    }
}

impl Rig {
    /// Makes the next call to `method route` take effect but hold its answer back.
    fn hold_answer(&self, fake: Fake, method: &Method, route: &str) {
        let long = Duration::from_mins(2);
        match fake {
            Fake::Hetzner => self
                .hetzner
                .control()
                .stall_answer_next(method, route, 1, long),
            Fake::Cloudflare => self
                .cloudflare
                .control()
                .stall_answer_next(method, route, 1, long),
        }
    }

    fn calls(&self, fake: Fake, method: &Method, route: &str) -> u64 {
        match fake {
            Fake::Hetzner => self.hetzner.control().calls(method, route),
            Fake::Cloudflare => self.cloudflare.control().calls(method, route),
        }
    }

    fn release_answers(&self) {
        self.hetzner.control().clear_faults();
        self.cloudflare.control().clear_faults();
    }

    /// Servers, firewalls, volumes, live tunnels, DNS records.
    fn inventory(&self) -> [usize; 5] {
        let hetzner = self.hetzner.control();
        let cloudflare = self.cloudflare.control();
        [
            hetzner.servers().len(),
            hetzner.firewalls().len(),
            hetzner.volumes().len(),
            cloudflare.live_tunnels().len(),
            cloudflare.dns_records().len(),
        ]
    }

    /// Registers a Hetzner release, makes an account, and asks for an Agent; returns the
    /// operator's client and the Agent's id.
    async fn provision(&self) -> (Api, String) {
        let data = Path::new(&self.args[3]);
        let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
        let op = Api::new(&self.url, operator.trim());
        op.current_release("2026.12.0", json!({"hetzner": "114690387"}))
            .await;
        let account = op.account("Acme").await;
        let agent = op
            .post("/api/agents", json!({"name": "dev", "account_id": account}))
            .await;
        let id = agent["id"].as_str().unwrap().to_owned();
        (op, id)
    }
}

impl Rig {
    /// Makes an account with a Vault key and asks for a Plain VM with it; returns the
    /// operator's client and the VM's id.
    async fn provision_plain_vm(&self) -> (Api, String) {
        let data = Path::new(&self.args[3]);
        let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
        let op = Api::new(&self.url, operator.trim());
        let account = op.account("Acme").await;
        let key = op
            .post(
                "/api/vault/keys",
                json!({"name": "alice", "public_key": KEY, "account_id": account}),
            )
            .await;
        let vm = op
            .post(
                "/api/plain-vms",
                json!({"name": "web", "account_id": account, "vault_key_ids": [key["id"]]}),
            )
            .await;
        let id = vm["id"].as_str().unwrap().to_owned();
        (op, id)
    }
}

/// Waits until the held call reached the fake and took effect, then kills `replica`.
async fn kill_while_held(rig: &Rig, replica: Replica, fake: Fake, method: &Method, route: &str) {
    eventually("the held call", Duration::from_mins(1), || {
        let reached = rig.calls(fake, method, route) >= 1;
        async move { reached }
    })
    .await;
    // The fake applies the call's effect as it arrives; give it a moment to finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    replica.daemon.signal("-KILL");
    let (status, _) = replica.daemon.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "control was killed");
}

async fn settles_running_with_one_of_each(rig: &Rig, op: &Api, agent: &str, what: &str) {
    eventually(
        &format!("the Agent running ({what})"),
        Duration::from_mins(1),
        || {
            let op = op.clone();
            let agent = agent.to_owned();
            async move {
                let view = op.get(&format!("/api/agents/{agent}")).await;
                view["state"] == "running" && view["operation"].is_null()
            }
        },
    )
    .await;
    assert_eq!(rig.inventory(), [1, 1, 1, 1, 1], "{what}");
    let view = op.get(&format!("/api/agents/{agent}")).await;
    let server = &rig.hetzner.control().servers()[0];
    assert_eq!(server.labels["control/id"], agent, "{what}");
    assert_eq!(
        view["last_error"],
        serde_json::Value::Null,
        "{what}: {view:#}"
    );
}

/// For each provisioning call in turn: a fresh database and fakes, control killed while the
/// call's answer is held, control started again, one of everything at the end.
async fn killed_at_every_call(postgres: bool) {
    for &(step, fake, method, route) in CALLS {
        let db = if postgres {
            match TestDb::postgres().await {
                Some(db) => Some(db),
                None => return,
            }
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path(), db.as_ref(), &[free_port()]).await;
        let first = start_control(&rig.args, rig.port);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        rig.hold_answer(fake, &method, route);
        let (op, agent) = rig.provision().await;
        kill_while_held(&rig, first, fake, &method, route).await;
        rig.release_answers();
        let second = start_control(&rig.args, rig.port);
        let what = format!("{step}: {method} {route}");
        settles_running_with_one_of_each(&rig, &op, &agent, &what).await;
        let (status, log) = second.daemon.stop();
        assert!(status.success(), "{log}");
        hz::schema::assert_answers_match_spec(rig.hetzner.control());
        cf::assert_answers_enveloped(rig.cloudflare.control());
    }
}

/// For each Plain VM provisioning call in turn, as `killed_at_every_call` does for Agents:
/// exactly one server and one firewall at the end, the firewall applied to the server.
async fn plain_vm_killed_at_every_call(postgres: bool) {
    for &(step, method, route) in PLAIN_VM_CALLS {
        let db = if postgres {
            match TestDb::postgres().await {
                Some(db) => Some(db),
                None => return,
            }
        } else {
            None
        };
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path(), db.as_ref(), &[free_port()]).await;
        let first = start_control(&rig.args, rig.port);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        rig.hold_answer(Fake::Hetzner, &method, route);
        let (op, vm) = rig.provision_plain_vm().await;
        kill_while_held(&rig, first, Fake::Hetzner, &method, route).await;
        rig.release_answers();
        let second = start_control(&rig.args, rig.port);
        let what = format!("{step}: {method} {route}");
        eventually(
            &format!("the Plain VM running ({what})"),
            Duration::from_mins(1),
            || {
                let (op, vm) = (op.clone(), vm.clone());
                async move {
                    let view = op.get(&format!("/api/plain-vms/{vm}")).await;
                    view["state"] == "running" && view["operation"].is_null()
                }
            },
        )
        .await;
        let view = op.get(&format!("/api/plain-vms/{vm}")).await;
        assert_eq!(
            view["last_error"],
            serde_json::Value::Null,
            "{what}: {view:#}"
        );
        assert_eq!(rig.inventory(), [1, 1, 0, 0, 0], "{what}");
        let server = &rig.hetzner.control().servers()[0];
        let firewall = &rig.hetzner.control().firewalls()[0];
        assert_eq!(server.labels["control/id"], vm, "{what}");
        assert_eq!(firewall.labels["control/id"], vm, "{what}");
        assert_eq!(server.firewalls, vec![firewall.id], "{what}: applied");
        assert_eq!(firewall.servers, vec![server.id], "{what}: applied");
        let (status, log) = second.daemon.stop();
        assert!(status.success(), "{log}");
        hz::schema::assert_answers_match_spec(rig.hetzner.control());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_vm_killed_at_every_provisioning_call_on_sqlite() {
    plain_vm_killed_at_every_call(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_vm_killed_at_every_provisioning_call_on_postgres() {
    plain_vm_killed_at_every_call(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_provisioning_call_on_sqlite() {
    killed_at_every_call(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_every_provisioning_call_on_postgres() {
    killed_at_every_call(true).await;
}

/// Two replicas on one PostgreSQL database: the one running the job is killed while Hetzner
/// holds the answer to its server creation, and the other finishes the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_surviving_replica_finishes_the_job() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let rig = rig(dir.path(), Some(&db), &ports).await;
    // Only the first replica runs while the job starts, so it is the one that makes the call.
    let first = start_control(&rig.args, ports[0]);
    let (method, route) = (Method::POST, "/v1/servers");
    rig.hold_answer(Fake::Hetzner, &method, route);
    let (op, agent) = rig.provision().await;
    eventually("the held call", Duration::from_mins(1), || {
        let reached = rig.calls(Fake::Hetzner, &method, route) >= 1;
        async move { reached }
    })
    .await;
    let second = start_control(&rig.args, ports[1]);
    kill_while_held(&rig, first, Fake::Hetzner, &method, route).await;
    rig.release_answers();
    let survivor = Api::new(&format!("http://127.0.0.1:{}", ports[1]), &op.token);
    settles_running_with_one_of_each(&rig, &survivor, &agent, "two replicas").await;
    let (status, log) = second.daemon.stop();
    assert!(status.success(), "{log}");
    hz::schema::assert_answers_match_spec(rig.hetzner.control());
    cf::assert_answers_enveloped(rig.cloudflare.control());
}
