//! The end-to-end flow once over TLS: control serves HTTPS with a certificate from a CA made
//! for the test, and the local provider's real vm-agents reach it over https trusting that CA
//! (`control_ca_file`, as an image built for an operator's own PKI would carry it), never
//! with `allow_insecure_control`. An Agent is provisioned, heartbeats into a running period,
//! is stopped, started and destroyed, and its ledger holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{
    Api, KillVmsOnDrop, Replica, eventually, ledger_holds, start_control, vm_agents,
    write_control_config_with,
};
use serde_json::{Value, json};
use test_support::free_port;
use test_support::tls::TestCa;

const WITHIN: Duration = Duration::from_secs(30);

/// Control, whose log a failed test shows.
struct ShowLogOnPanic(Option<Replica>);

impl Drop for ShowLogOnPanic {
    fn drop(&mut self) {
        if let Some(replica) = &self.0
            && std::thread::panicking()
        {
            eprintln!("--- control's log ---\n{}", replica.daemon.log());
        }
    }
}

async fn agent(op: &Api, id: &str) -> Value {
    op.get(&format!("/api/agents/{id}")).await
}

/// Every file of the VM's `agent.toml` and its drop-ins, as vm-agent reads them.
fn agent_config_files(data: &Path, id: &str) -> Vec<(String, String)> {
    let etc = data.join("local-vms").join(id).join("root/etc/vm-agent");
    let mut files = vec![etc.join("agent.toml")];
    files.extend(
        std::fs::read_dir(etc.join("agent.d"))
            .unwrap()
            .map(|entry| entry.unwrap().path()),
    );
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            (path.display().to_string(), text)
        })
        .collect()
}

/// Control serving HTTPS with a certificate of a CA made for the test, its local VMs given
/// that CA; the operator's client trusts it too.
struct OverTls {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    url: String,
    replica: ShowLogOnPanic,
    op: Api,
}

impl OverTls {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("e2e test CA");
        let tls_dir = dir.path().join("tls");
        std::fs::create_dir(&tls_dir).unwrap();
        let ca_file = ca.write(&tls_dir);
        let (cert, key) = ca.server_cert(1).write(&tls_dir);
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let config = write_control_config_with(
            dir.path(),
            std::slice::from_ref(&url),
            None,
            &format!("control_url = \"{url}\""),
            &format!(
                "control_ca_file = \"{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                ca_file.display(),
                cert.display(),
                key.display()
            ),
        );
        let data = dir.path().join("data");
        let args = e2e::control_args(&config, &data, None);
        let replica = ShowLogOnPanic(Some(start_control(&args, port)));
        let operator = std::fs::read_to_string(data.join("operator-token")).unwrap();
        let op = Api {
            client: ca.client(),
            url: url.clone(),
            token: operator.trim().to_owned(),
        };
        Self {
            dir,
            ca_file,
            url,
            replica,
            op,
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the Agent's vm-agent runs with: https, the CA, and no way around checking
    /// control's certificate.
    fn assert_agent_trusts_the_ca_only(&self, id: &str) {
        let files = agent_config_files(&self.data(), id);
        let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
        assert!(!all.contains("allow_insecure_control = true"), "{files:#?}");
        assert!(
            all.contains(&format!("control_url = \"{}\"", self.url)),
            "{files:#?}"
        );
        assert!(
            all.contains(&format!("control_ca_file = \"{}\"", self.ca_file.display())),
            "{files:#?}"
        );
        assert!(!all.contains("http://"), "{files:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_against_control_over_tls() {
    let mut system = OverTls::start();
    let _vms = KillVmsOnDrop(system.dir.path().to_owned());
    let data = system.data();
    let op = system.op.clone();
    op.current_release("2026.11.0", json!({"local": "local-2026.11.0"}))
        .await;
    let acme = op.account("acme").await;
    let token = op
        .post(&format!("/api/accounts/{acme}/tokens"), json!({}))
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let api = Api {
        token,
        ..op.clone()
    };

    let id = api.post("/api/agents", json!({"name": "dev"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        "the Agent running and heartbeating over TLS",
        WITHIN,
        || async {
            let view = agent(&op, &id).await;
            view["state"] == "running" && view["healthy"] == true
        },
    )
    .await;
    system.assert_agent_trusts_the_ca_only(&id);

    api.post(&format!("/api/agents/{id}/stop"), json!({})).await;
    eventually("the stop", WITHIN, || async {
        agent(&op, &id).await["state"] == "paused"
    })
    .await;
    eventually("its vm-agent gone", WITHIN, || async {
        vm_agents(&data, &id).is_empty()
    })
    .await;

    api.post(&format!("/api/agents/{id}/start"), json!({}))
        .await;
    eventually("the start, heartbeating over TLS again", WITHIN, || async {
        let view = agent(&op, &id).await;
        view["state"] == "running" && view["operation"].is_null() && view["healthy"] == true
    })
    .await;
    ledger_holds(&op, &[&id], "over TLS, running again").await;

    let (status, _) = api
        .call(reqwest::Method::DELETE, &format!("/api/agents/{id}"), None)
        .await;
    assert_eq!(status, 202);
    eventually("the destroy", WITHIN, || async {
        agent(&op, &id).await["state"] == "destroyed"
    })
    .await;
    assert!(vm_agents(&data, &id).is_empty(), "no vm-agent is left");
    ledger_holds(&op, &[&id], "over TLS, destroyed").await;
    let periods: Vec<Value> = op.get(&format!("/api/agents/{id}/timeline")).await["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].clone())
        .collect();
    assert_eq!(periods, ["paused", "running", "paused", "running"]);
    let verdict = op.get("/api/audit/verify").await;
    assert_eq!(verdict["ok"], true, "{verdict:#}");

    let (status, log) = system.replica.0.take().unwrap().daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("serving HTTPS"), "{log}");
    assert!(log.contains("agent registered"), "{log}");
}
