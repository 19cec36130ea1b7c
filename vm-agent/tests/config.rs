//! Bad configuration is refused at start, naming the key, and nothing starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::Rig;
use test_support::workspace_bin;

/// Runs `vm-agent <verb> --config <file>` with `env`; returns (exit code, stderr).
fn vm_agent(
    rig: &Rig,
    verb: &str,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut command = Command::new(workspace_bin("vm-agent"));
    command
        .args([verb, "--config"])
        .arg(config)
        .env("STAND_IN_CLOUDFLARED_LOG", rig.path("launches.jsonl"))
        .env_remove("TUNNEL_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A bad config: what is wrong, its text, its environment, and what the error must name.
type BadConfig<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let rig = Rig::new();
    let good = std::fs::read_to_string(rig.config()).unwrap();
    let replace = |from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        good.replace(from, to)
    };
    // Every line of the good config, with `change` applied (`None` drops the line).
    let lines = |change: &dyn Fn(&str) -> Option<String>| {
        good.lines()
            .filter_map(change)
            .fold(String::new(), |mut text, line| {
                text.push_str(&line);
                text.push('\n');
                text
            })
    };
    let not_a_ca = rig.path("not-a-ca.pem");
    std::fs::write(&not_a_ca, "not a certificate\n").unwrap();
    let with_ca = |file: &str| {
        replace(
            "allow_insecure_control = true",
            &format!("allow_insecure_control = true\ncontrol_ca_file = \"{file}\""),
        )
    };
    let cases: Vec<BadConfig> = vec![
        (
            "a missing CA file",
            with_ca(&rig.path("no-such-ca.pem").display().to_string()),
            vec![],
            "`control_ca_file` cannot read",
        ),
        (
            "a CA file without certificates",
            with_ca(&not_a_ca.display().to_string()),
            vec![],
            "`control_ca_file`",
        ),
        (
            "a relative CA file",
            with_ca("ca.pem"),
            vec![],
            "`control_ca_file` must be an absolute path",
        ),
        (
            "missing key",
            lines(&|l| (!l.starts_with("agent_id")).then(|| l.to_owned())),
            vec![],
            "`agent_id`",
        ),
        (
            "wrong type",
            replace("backoff_max_ms = 800", "backoff_max_ms = \"fast\""),
            vec![],
            "`cloudflared.backoff_max_ms`",
        ),
        (
            "unknown key",
            replace(
                "stable_after_s = 1",
                "stable_after_s = 1\nstable_afer_s = 2",
            ),
            vec![],
            "stable_afer_s",
        ),
        (
            "unreadable token file",
            replace("tunnel-token", "no-such-token"),
            vec![],
            "`cloudflared.token_file`",
        ),
        (
            "plain http without the test flag",
            replace(
                "allow_insecure_control = true",
                "allow_insecure_control = false",
            ),
            vec![],
            "`control_url`",
        ),
        (
            "metrics off loopback",
            replace("metrics = \"127.0.0.1:", "metrics = \"0.0.0.0:"),
            vec![],
            "`cloudflared.metrics`",
        ),
        (
            "the token in extra args",
            replace(
                "failed_retry_s = 30",
                "failed_retry_s = 30\nextra_args = [\"--token\", \"x\"]",
            ),
            vec![],
            "`cloudflared.extra_args`",
        ),
        (
            "a bad environment override",
            good.clone(),
            vec![("VM_AGENT_HEARTBEAT__INTERVAL_S", "soon")],
            "VM_AGENT_HEARTBEAT__INTERVAL_S: `heartbeat.interval_s`",
        ),
        (
            "an unknown user",
            lines(&|l| {
                Some(if l.starts_with("owner = ") {
                    "owner = \"nobody-here\"".to_owned()
                } else {
                    l.to_owned()
                })
            }),
            vec![],
            "`slice.owner`",
        ),
    ];
    for (what, text, env, expected) in cases {
        let path = rig.path("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = vm_agent(&rig, "check-config", &path, &env);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected} in: {stderr}"
        );
        let (code, stderr) = vm_agent(&rig, "run", &path, &env);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(stderr.contains(expected), "{what}: {stderr}");
        assert!(
            !rig.path("launches.jsonl").exists(),
            "{what}: cloudflared was started"
        );
        assert!(
            !rig.path("run/status.sock").exists(),
            "{what}: the agent started"
        );
    }
    let (code, _) = vm_agent(&rig, "check-config", &rig.config(), &[]);
    assert_eq!(code, Some(0));
}
