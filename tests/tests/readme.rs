//! The README keeps its promises: its run command is the `control serve` this test starts, and
//! its curl walkthrough runs verbatim against the real binary, leaving the log lines a support
//! engineer looks for.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;

use test_support::{Daemon, free_port, have_program, workspace_bin};

fn readme() -> String {
    std::fs::read_to_string(e2e::repo_root().join("README.md")).unwrap()
}

/// The shell block between the walkthrough markers.
fn walkthrough(readme: &str) -> String {
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("the walkthrough start marker");
    let end = readme
        .find("<!-- walkthrough:end -->")
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
    if !have_program("curl") || !have_program("jq") {
        return;
    }
    let control = workspace_bin("control");
    let dir = tempfile::tempdir().unwrap();
    // `cargo run -p control -- serve` at the repository root, on a port of its own.
    let port = free_port();
    let mut serve = Command::new(&control);
    serve
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env_remove("CONTROL_DATABASE")
        .env_remove("CONTROL_DATA_DIR")
        .env("RUST_LOG", "info");
    let server = Daemon::start(serve, port);
    // The walkthrough stops its Agent; should it fail half-way, its VM goes too.
    let _vms = e2e::KillVmsOnDrop(dir.path().to_owned());

    let script = walkthrough(&readme())
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
    let agent_id = check_answers(&stdout);
    check_log(&log, &agent_id);
    let operator = std::fs::read_to_string(dir.path().join("control-data/operator-token")).unwrap();
    let secret = &operator.trim()[operator.trim().len() - 64..];
    assert!(!log.contains(secret), "a token reached the log");
}

/// Checks what each step printed; returns the Agent's id.
fn check_answers(stdout: &str) -> String {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
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
