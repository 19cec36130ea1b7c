//! The `control` binary as an operator runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use test_support::Daemon;

const CONTROL: &str = env!("CARGO_BIN_EXE_control");

fn control(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(CONTROL)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("CONTROL_DATABASE")
        .env_remove("CONTROL_CONFIG")
        .output()
        .unwrap()
}

/// Starts `control serve` on a free port.
fn serve(data_dir: &Path) -> (Daemon, String) {
    let port = test_support::free_port();
    let mut command = Command::new(CONTROL);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CONTROL_DATABASE")
        .env("RUST_LOG", "info");
    (
        Daemon::start(command, port),
        format!("http://127.0.0.1:{port}"),
    )
}

#[tokio::test]
async fn first_start_writes_the_operator_token_and_never_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (daemon, base) = serve(&data_dir);

    let token_file = data_dir.join("operator-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("ctl_tok_"), "{token}");
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let agents = test_support::http_client()
        .get(format!("{base}/api/agents"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(agents.status(), 200);

    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("wrote an operator token") && log.contains(&token_file.display().to_string()),
        "{log}"
    );
    assert!(log.contains("control stopped"), "{log}");
    let secret = &token[token.len() - 64..];
    assert!(!log.contains(secret), "the token reached the log");

    // A second start keeps the first token and writes none.
    let (daemon, _) = serve(&data_dir);
    let (_, log) = daemon.stop();
    assert!(!log.contains("wrote an operator token"), "{log}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token);
}

#[test]
fn accounts_and_tokens_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let created = control(dir.path(), &["account", "create", "Acme Corp"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let account = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(account.starts_with("acc_"), "{account}");

    let token = control(
        dir.path(),
        &["token", "create", "--account", &account, "--label", "ci"],
    );
    assert!(token.status.success());
    assert!(String::from_utf8_lossy(&token.stdout).starts_with("ctl_tok_"));
    let operator = control(dir.path(), &["token", "create", "--operator"]);
    assert!(operator.status.success());

    let unknown = control(dir.path(), &["token", "create", "--account", "acc_nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("account acc_nope not found"));
    let neither = control(dir.path(), &["token", "create"]);
    assert_eq!(
        neither.status.code(),
        Some(2),
        "clap refuses a token for nobody"
    );
    let empty = control(dir.path(), &["account", "create", ""]);
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("name: must not be empty"));

    let rollup = control(dir.path(), &["usage", "rollup"]);
    assert!(String::from_utf8_lossy(&rollup.stdout).starts_with("usage rolled up"));
    let migrate = control(dir.path(), &["migrate"]);
    assert!(String::from_utf8_lossy(&migrate.stdout).starts_with("database schema is current"));
    let verify = control(dir.path(), &["audit", "verify"]);
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout).trim_end(),
        format!("audit chain ok: 0 events, head {}", "0".repeat(64))
    );
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8080\"\n[jobs]\npoll_interval_ms = 0\n",
    )
    .unwrap();
    let output = control(
        dir.path(),
        &["--config", config.to_str().unwrap(), "migrate"],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("control.toml") && stderr.contains("jobs.poll_interval_ms"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("control.db").exists(),
        "nothing was started"
    );

    std::fs::write(&config, "databse = \"sqlite://x\"\n").unwrap();
    let typo = control(
        dir.path(),
        &["--config", config.to_str().unwrap(), "migrate"],
    );
    assert!(String::from_utf8_lossy(&typo.stderr).contains("databse"));
}
