//! The providers' own clients, unchanged, against the fakes, through the calls control makes:
//! Hetzner's official CLI `hcloud` (built on hcloud-go) and hcloud-python, both as Debian
//! packages (`hcloud-cli`, `python3-hcloud`; CI installs them), every answer they got then
//! checked against Hetzner's OpenAPI schemas; and Cloudflare's Python client from the Python Package Index.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use provider_fakes::hetzner::{HetznerFake, Options, schema};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `program args… URL TOKEN` against a fresh fake and checks its answers.
async fn passes(program: &str, args: &[PathBuf], success: &str) {
    let fake = HetznerFake::start(Options {
        action_delay: Duration::from_millis(20),
        ..Options::default()
    })
    .await
    .unwrap();
    let mut command = Command::new(program);
    command.args(args).arg(fake.url()).arg(fake.token());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(success),
        "{program} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked = schema::assert_answers_match_spec(fake.control());
    assert!(checked > 20, "only {checked} answers were checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hetzners_cli_works_against_the_fake_unchanged() {
    if !test_support::have_program("hcloud") {
        return;
    }
    passes(
        "bash",
        &[script("hcloud_cli_check.sh")],
        "hcloud-cli against the fake: all calls passed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hcloud_python_works_against_the_fake_unchanged() {
    // Debian's interpreter, where python3-hcloud is installed (a python3 earlier on PATH,
    // such as pyenv's, would not see it).
    let python = "/usr/bin/python3";
    let has_hcloud = Command::new(python)
        .args(["-c", "import hcloud"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_hcloud {
        test_support::skip("python3-hcloud is not installed; hcloud-python was not run");
        return;
    }
    passes(
        python,
        &[script("hcloud_python_check.py")],
        "hcloud-python against the fake: all calls passed",
    )
    .await;
}

/// Cloudflare's official Python client, from the Python Package Index: `.ci/run` installs it in a virtualenv and
/// names its interpreter in `CONTROL_TEST_CLOUDFLARE_PYTHON` (see the script for doing it by
/// hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_python_works_against_the_fake_unchanged() {
    let Some(python) = std::env::var_os("CONTROL_TEST_CLOUDFLARE_PYTHON") else {
        test_support::skip(
            "CONTROL_TEST_CLOUDFLARE_PYTHON is not set; cloudflare-python was not run",
        );
        return;
    };
    let fake =
        provider_fakes::cloudflare::CloudflareFake::start(provider_fakes::cloudflare::Options {
            rate_limit: 60,
            ..provider_fakes::cloudflare::Options::default()
        })
        .await
        .unwrap();
    let mut command = Command::new(python);
    command
        .arg(script("cloudflare_python_check.py"))
        .arg(fake.url())
        .arg(fake.token())
        .arg(fake.account_id())
        .arg(fake.zone_id());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("against the fake: every step as expected"),
        "cloudflare-python failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    provider_fakes::cloudflare::assert_answers_enveloped(fake.control());
}
