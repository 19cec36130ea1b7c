//! `control serve` as an operator exposes it: HTTPS from `[tls]`, its certificate renewed by
//! SIGHUP without a restart, and `/metrics` on a listener of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::tls::TestCa;
use test_support::{Daemon, free_port};

const CONTROL: &str = env!("CARGO_BIN_EXE_control");

/// A config file with `top` (top-level keys) and `tls` (the `[tls]` section's keys, if any);
/// local VMs are never started here, so their programs are stand-ins that need no build.
fn write_config(dir: &Path, top: &str, tls: Option<(&Path, &Path)>) -> PathBuf {
    let tls = tls.map_or(String::new(), |(cert, key)| {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    let path = dir.join("control.toml");
    std::fs::write(
        &path,
        format!(
            "{top}\n{tls}[local_provider]\nvm_agent = \"/bin/false\"\ncloudflared = \"/bin/false\"\n"
        ),
    )
    .unwrap();
    path
}

fn command(dir: &Path, config: &Path, port: u16) -> Command {
    let mut command = Command::new(CONTROL);
    command
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("CONTROL_DATABASE")
        .env_remove("CONTROL_METRICS_LISTEN")
        .env("RUST_LOG", "info");
    command
}

/// The certificate `https://127.0.0.1:port` shows a new connection, DER.
async fn served_certificate(ca: &TestCa, port: u16) -> Vec<u8> {
    // A client of its own: a pooled connection would show the certificate it was made with.
    let response = ca
        .client_builder()
        .tls_info(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

#[tokio::test]
async fn https_from_tls_and_a_renewed_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("control test CA");
    let first = ca.server_cert(1);
    let (cert, key) = first.write(dir.path());
    let config = write_config(
        dir.path(),
        "metrics_listen = \"127.0.0.1:0\"",
        Some((&cert, &key)),
    );
    let port = free_port();
    let daemon = Daemon::start(command(dir.path(), &config, port), port);

    assert_eq!(served_certificate(&ca, port).await, first.der);
    // Plain HTTP gets no answer from a TLS listener; a client without the CA refuses it.
    let plain = test_support::http_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "plain HTTP is not served"
    );
    let untrusted = test_support::http_client()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(untrusted.is_err(), "the test CA is no public one");

    // Renewed in place, then SIGHUP: new connections get the new certificate.
    let second = ca.server_cert(2);
    second.write(dir.path());
    daemon.signal("-HUP");
    daemon.wait_until("the reload", Duration::from_secs(10), || {
        daemon.log().contains("reloaded the TLS certificate")
    });
    let seen = served_certificate(&ca, port).await;
    assert_eq!(seen, second.der, "serial {} after SIGHUP", second.serial);
    assert_ne!(seen, first.der);

    // A bad renewal (a key of another certificate): logged, and the one in service stays.
    std::fs::write(&key, ca.server_cert(3).key_pem).unwrap();
    daemon.signal("-HUP");
    daemon.wait_until("the refused reload", Duration::from_secs(10), || {
        daemon.log().contains("were not reloaded")
    });
    assert_eq!(served_certificate(&ca, port).await, second.der);

    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("is not the private key of the certificate"),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
}

#[test]
fn a_certificate_that_cannot_be_served_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("control test CA");
    let (cert, key) = ca.server_cert(1).write(dir.path());
    std::fs::write(&key, ca.server_cert(2).key_pem).unwrap();
    let config = write_config(
        dir.path(),
        "metrics_listen = \"127.0.0.1:0\"",
        Some((&cert, &key)),
    );
    let output = command(dir.path(), &config, free_port()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.key_file")
            && stderr.contains(&key.display().to_string())
            && stderr.contains("tls.cert_file"),
        "{stderr}"
    );

    let missing = dir.path().join("missing.pem");
    let config = write_config(
        dir.path(),
        "metrics_listen = \"127.0.0.1:0\"",
        Some((&missing, &key)),
    );
    let output = command(dir.path(), &config, free_port()).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.cert_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

async fn status(url: &str) -> (u16, String) {
    let response = test_support::http_client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_are_not_served_on_the_apis_address_when_they_have_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        None,
    );
    let daemon = Daemon::start(command(dir.path(), &config, port), port);
    let (code, body) = status(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("metrics_listen"), "{body}");
    let (code, body) = status(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("control_heartbeats_total"), "{body}");
    // The metrics listener serves nothing of the API.
    let (code, _) = status(&format!("http://127.0.0.1:{metrics_port}/healthz")).await;
    assert_eq!(code, 404);
    let (code, _) = status(&format!("http://127.0.0.1:{port}/healthz")).await;
    assert_eq!(code, 200);
    let (status_code, log) = daemon.stop();
    assert!(status_code.success(), "{log}");
    assert!(
        log.contains(&format!("metrics=127.0.0.1:{metrics_port}")),
        "{log}"
    );

    // Given the API's own address, /metrics is served with the API, as before it had its own.
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
        None,
    );
    let daemon = Daemon::start(command(dir.path(), &config, port), port);
    let (code, body) = status(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(code, 200, "{body}");
    let (status_code, log) = daemon.stop();
    assert!(status_code.success(), "{log}");
}
