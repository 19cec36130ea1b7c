//! The README keeps its promises: its run command is the `control serve` this test starts, and
//! its curl walkthrough runs verbatim against the real binary, leaving the log lines a support
//! engineer looks for.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;

use test_support::{Daemon, free_port, have_program, workspace_bin};

fn readme() -> String {
    std::fs::read_to_string(e2e::repo_root().join("README.md")).unwrap()
}

/// Printed between the two walkthroughs, to tell their outputs apart.
const BETWEEN: &str = "=== the Plain VM walkthrough ===";

/// The shell block between the `name` walkthrough's markers.
fn walkthrough(readme: &str, name: &str) -> String {
    let start = readme
        .find(&format!("<!-- {name}:start -->"))
        .expect("the walkthrough start marker");
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .expect("the walkthrough end marker");
    let block = &readme[start..end];
    let body = block.split_once("```sh\n").expect("a ```sh block").1;
    body.rsplit_once("```")
        .expect("the closing fence")
        .0
        .to_owned()
}

#[test]
fn the_two_commands_are_the_ones_tested() {
    let readme = readme();
    assert!(
        readme.contains("```sh\ncargo run -p control -- serve\n```"),
        "the run command changed"
    );
    assert!(
        readme.contains("```sh\ncargo test --workspace\n```"),
        "the test command changed"
    );
    let ci = std::fs::read_to_string(e2e::repo_root().join(".ci/run")).unwrap();
    assert!(
        ci.contains("cargo test --workspace"),
        ".ci/run must run the README's test command"
    );
}

#[test]
fn the_walkthrough_runs_as_written() {
    if !have_program("curl") || !have_program("jq") || !have_program("ssh-keygen") {
        return;
    }
    let control = workspace_bin("control");
    let dir = tempfile::tempdir().unwrap();
    // `cargo run -p control -- serve` at the repository root, on a port of its own.
    let port = free_port();
    let mut serve = Command::new(&control);
    serve
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        // Beside other tests' servers: `/metrics` on a port of its own, not the default one.
        .args(["--metrics-listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("CONTROL_DATABASE")
        .env_remove("CONTROL_DATA_DIR")
        .env("RUST_LOG", "info");
    let server = Daemon::start(serve, port);
    // The walkthrough stops its Agent; should it fail half-way, its VM goes too.
    let _vms = e2e::KillVmsOnDrop(dir.path().to_owned());

    let readme = readme();
    let script = format!(
        "{}\necho '{BETWEEN}'\n{}",
        walkthrough(&readme, "walkthrough"),
        walkthrough(&readme, "plain-vm-walkthrough")
    )
    .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
    .replace("cargo run -q -p control --", &control.display().to_string());
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let (stopped, log) = server.stop();
    assert!(
        run.status.success(),
        "the walkthrough failed:\n{stdout}\n{}\ncontrol's log:\n{log}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stopped.success(), "{log}");
    let (agents, plain_vms) = stdout.split_once(BETWEEN).expect("both walkthroughs ran");
    let agent_id = check_answers(agents);
    check_log(&log, &agent_id);
    let vm = check_plain_vm_answers(plain_vms);
    check_plain_vm_log(&log, &vm);
    let shown: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("vm.json")).unwrap())
            .unwrap();
    let password = shown["one_time_password"].as_str().unwrap();
    assert!(
        !log.contains(password),
        "the one-time password reached the log"
    );
    assert!(
        !log.contains("$6$"),
        "the one-time password's hash reached the log"
    );
    let database = std::fs::read(dir.path().join("control-data/control.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&database).contains(password),
        "the one-time password reached the database"
    );
    let operator = std::fs::read_to_string(dir.path().join("control-data/operator-token")).unwrap();
    let secret = &operator.trim()[operator.trim().len() - 64..];
    assert!(!log.contains(secret), "a token reached the log");
}

/// Checks what each step printed; returns the Agent's id.
fn check_answers(stdout: &str) -> String {
    let lines = json_lines(stdout);
    let find = |key: &str| {
        lines
            .iter()
            .filter(|l| l.get(key).is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(find("current")[0]["current"], true);
    let agent = &find("image")[0];
    assert_eq!(agent["state"], "running", "{agent}");
    assert_eq!(agent["healthy"], true, "its vm-agent heartbeats: {agent}");
    assert_eq!(agent["operation"], serde_json::Value::Null, "{agent}");
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let states: Vec<_> = find("started_at")
        .iter()
        .map(|p| p["state"].clone())
        .collect();
    assert_eq!(states, ["paused", "running", "paused"]);
    let usage = find("running_s");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["resource_id"], agent_id.as_str());
    let actions: Vec<_> = find("seq").iter().map(|e| e["action"].clone()).collect();
    assert_eq!(actions, ["agent.provision", "agent.stop"]);
    assert_eq!(find("ok")[0]["ok"], true);
    assert!(stdout.contains("usage rolled up"), "{stdout}");
    agent_id
}

/// JSON lines of the output.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Checks what each step of the Plain VM walkthrough printed; returns the VM's id.
fn check_plain_vm_answers(stdout: &str) -> String {
    let lines = json_lines(stdout);
    let key = &lines[0];
    assert_eq!(key["algorithm"], "ssh-ed25519", "{key}");
    assert!(key["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let accepted = &lines[1];
    assert_eq!(
        (
            &accepted["state"],
            &accepted["operation"],
            &accepted["password_shown"]
        ),
        (
            &serde_json::json!("stopped"),
            &serde_json::json!("provision"),
            &serde_json::json!(true)
        ),
        "{accepted}"
    );
    let vm_id = accepted["id"].as_str().unwrap().to_owned();
    let running = &lines[2];
    assert_eq!(running["state"], "running", "{running}");
    assert!(
        running["ipv4"].as_str().unwrap().starts_with("192.0.2."),
        "{running}"
    );
    assert!(
        running["ipv6"].as_str().unwrap().starts_with("2001:db8:"),
        "{running}"
    );
    assert_eq!(running["keys"][0], key["fingerprint"]);
    assert_eq!(
        lines[3]["rules"],
        serde_json::json!(["tcp/22 from 0.0.0.0/0,::/0"])
    );
    assert_eq!(
        lines[4]["rules"],
        serde_json::json!(["tcp/22 from 203.0.113.0/24", "tcp/443 from 0.0.0.0/0,::/0"])
    );
    let usage: Vec<_> = lines
        .iter()
        .filter(|l| l.get("running_s").is_some())
        .collect();
    assert_eq!(usage.len(), 2, "a row per account: {usage:?}");
    assert!(
        usage.iter().all(|u| u["running_s"].as_i64().unwrap() >= 1),
        "{usage:?}"
    );
    assert!(
        usage
            .iter()
            .all(|u| u["resource_kind"] == "plain_vm" && u["paused_s"] == 0)
    );
    let actions: Vec<_> = lines
        .iter()
        .filter(|l| l.get("seq").is_some())
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(actions, ["plain_vm.transfer", "plain_vm.destroy"]);
    vm_id
}

/// The Plain VM's lifecycle in the log, with its ids.
fn check_plain_vm_log(log: &str, vm_id: &str) {
    for message in [
        "plain VM provisioning accepted",
        "plain VM operation confirmed by the provider",
        "plain VM firewall replaced at the provider",
        "plain VM transferred",
        "plain VM operation accepted",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(message) && l.contains(vm_id))
            .unwrap_or_else(|| panic!("no `{message}` line for {vm_id} in:\n{log}"));
        assert!(line.contains("request_id="), "{line}");
    }
}

/// What a support engineer greps for: every lifecycle step with its request, account and
/// resource ids.
fn check_log(log: &str, agent_id: &str) {
    let steps = [
        "agent provisioning accepted",
        "agent registered",
        "agent operation accepted",
        "agent operation confirmed by the provider",
    ];
    for message in steps {
        let line = log
            .lines()
            .find(|l| l.contains(message) && l.contains(agent_id))
            .unwrap_or_else(|| panic!("no `{message}` line for {agent_id} in:\n{log}"));
        assert!(
            line.contains("request_id=req_") && line.contains("account_id=acc_"),
            "{line}"
        );
    }
}
