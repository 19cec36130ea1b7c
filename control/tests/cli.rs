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
        // Tests run side by side: a port of its own, not the default one.
        .args(["--metrics-listen", "127.0.0.1:0"])
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

/// A manifest as `image/build` writes it, for release `release` of `variant`.
fn manifest(release: &str, variant: &str, image_sha: &str) -> serde_json::Value {
    let agent = variant == "agent";
    serde_json::json!({
        "format": 1,
        "variant": variant,
        "release": release,
        "suite": "bookworm",
        "architecture": "amd64",
        "vm_agent": agent.then(|| serde_json::json!({"version": "0.1.0", "sha256": "a".repeat(64)})),
        "cloudflared": agent.then(|| serde_json::json!({"version": "2025.8.0", "sha256": "b".repeat(64), "source": "stand-in"})),
        "packages": [{"name": "bash", "version": "5.2.15-2+b7"}],
        "image": {"file": "disk.raw", "format": "raw", "bytes": 2_147_483_648_u64, "sha256": image_sha},
        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "root=LABEL=root ro console=ttyS0"},
        "built_by": "a field this control does not know"
    })
}

fn write_manifest(path: &Path, value: &serde_json::Value) -> String {
    use sha2::Digest;
    let text = serde_json::to_string_pretty(value).unwrap();
    std::fs::write(path, &text).unwrap();
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn printed_image(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn image_releases_are_registered_from_their_manifests_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let path = dir.path().join("manifest.json");
    let file = path.to_str().unwrap();
    let digest = write_manifest(&path, &manifest("2026.12.0", "agent", &"c".repeat(64)));
    let register = |extra: &[&str]| {
        let mut args = vec!["image", "register", "--manifest", file];
        args.extend_from_slice(extra);
        control(&data_dir, &args)
    };
    let asked = [
        "--ref",
        "local=agent-2026.12.0",
        "--ref",
        "hetzner=123456",
        "--env",
        "FEATURE_X=on=yes",
        "--current",
    ];

    let first = printed_image(&register(&asked));
    assert_eq!(first["version"], "2026.12.0");
    assert_eq!(first["agent_version"], "0.1.0");
    assert_eq!(first["manifest_digest"], digest.as_str());
    assert_eq!(
        first["refs"],
        serde_json::json!({"hetzner": "123456", "local": "agent-2026.12.0"})
    );
    assert_eq!(first["env"], serde_json::json!({"FEATURE_X": "on=yes"}));
    assert_eq!(first["current"], true);

    // Again, as a retried deploy script would: the same release, printed, exit 0.
    let again = printed_image(&register(&asked));
    assert_eq!(again, first);

    // The same release from a different manifest: refused, naming the digest.
    let other = write_manifest(&path, &manifest("2026.12.0", "agent", &"d".repeat(64)));
    let refused = register(&asked);
    assert_eq!(refused.status.code(), Some(2));
    let message = stderr(&refused);
    assert!(
        message.contains("release 2026.12.0 is already registered")
            && message.contains("manifest_digest")
            && message.contains(&digest)
            && message.contains(&other)
            && !message.contains("refs"),
        "{message}"
    );
    assert!(refused.stdout.is_empty());
    // The first manifest with other refs: refused, naming the refs.
    write_manifest(&path, &manifest("2026.12.0", "agent", &"c".repeat(64)));
    let refs = register(&["--ref", "local=agent-2026.12.0"]);
    assert_eq!(refs.status.code(), Some(2));
    assert!(
        stderr(&refs).contains("a different refs") && !stderr(&refs).contains("manifest_digest"),
        "{}",
        stderr(&refs)
    );

    refuses_what_is_not_a_good_release(&path, &register);

    // A second release, not made current.
    let second = printed_image(&register(&["--ref", "local=agent-2026.12.1"]));
    assert_eq!(second["current"], false);

    // What the API lists afterwards: both releases as registered, the first current.
    let (daemon, base) = serve(&data_dir);
    let token = std::fs::read_to_string(data_dir.join("operator-token")).unwrap();
    let listed: serde_json::Value = test_support::http_client()
        .get(format!("{base}/api/images"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    daemon.stop();
    assert_eq!(listed["items"], serde_json::json!([second, first]));
}

/// What `register` (run with extra arguments on the manifest at `path`) refuses, each time
/// naming why: a plain image, a malformed manifest, a bad or repeated ref, no ref at all.
fn refuses_what_is_not_a_good_release(
    path: &Path,
    register: &dyn Fn(&[&str]) -> std::process::Output,
) {
    // A plain image is not an Agent release.
    write_manifest(path, &manifest("2026.12.1", "plain", &"c".repeat(64)));
    let plain = register(&["--ref", "local=plain"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(
        stderr(&plain).contains("plain image") && stderr(&plain).contains("not an Agent release"),
        "{}",
        stderr(&plain)
    );
    // A malformed manifest is refused naming the field.
    let mut bad = manifest("2026.12.1", "agent", &"c".repeat(64));
    bad["vm_agent"]["sha256"] = serde_json::json!("ABC");
    write_manifest(path, &bad);
    let malformed = register(&["--ref", "local=x"]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(
        stderr(&malformed).contains("vm_agent.sha256"),
        "{}",
        stderr(&malformed)
    );
    bad = manifest("2026.12.1", "agent", &"c".repeat(64));
    bad["release"] = serde_json::json!(["2026.12.1"]);
    write_manifest(path, &bad);
    let shape = register(&["--ref", "local=x"]);
    assert!(
        stderr(&shape).contains("release: invalid type"),
        "{}",
        stderr(&shape)
    );
    // The server's own checks reach the operator with the field they name.
    write_manifest(path, &manifest("2026.12.1", "agent", &"c".repeat(64)));
    let bad_ref = register(&["--ref", "hetzner=debian-12"]);
    assert_eq!(bad_ref.status.code(), Some(2));
    assert!(
        stderr(&bad_ref).contains("refs.hetzner: must be a numeric Hetzner image id"),
        "{}",
        stderr(&bad_ref)
    );
    let twice = register(&["--ref", "local=a", "--ref", "local=b"]);
    assert!(
        stderr(&twice).contains("--ref local is given twice"),
        "{}",
        stderr(&twice)
    );
    let none = register(&[]);
    assert_eq!(none.status.code(), Some(2), "clap asks for a --ref");
}
