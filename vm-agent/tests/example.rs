//! The example configuration shipped with the agent is valid.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;

use vm_agent::config::{Config, Source};

#[test]
fn the_example_config_is_accepted() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/agent.example.toml"))
        .unwrap();
    // Point the files it names at ones that exist here, as cloud-init would have written them.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("tunnel-token");
    let bootstrap = dir.path().join("bootstrap-token");
    std::fs::write(&token, "a-tunnel-token").unwrap();
    std::fs::write(&bootstrap, "a-bootstrap-token").unwrap();
    let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let env = BTreeMap::from([
        (
            "VM_AGENT_CLOUDFLARED__BINARY".to_owned(),
            "/bin/sh".to_owned(),
        ),
        (
            "VM_AGENT_CLOUDFLARED__TOKEN_FILE".to_owned(),
            token.display().to_string(),
        ),
        (
            "VM_AGENT_BOOTSTRAP_TOKEN_FILE".to_owned(),
            bootstrap.display().to_string(),
        ),
        (
            "VM_AGENT_CREDENTIAL_FILE".to_owned(),
            dir.path().join("credential").display().to_string(),
        ),
        ("VM_AGENT_SLICE__OWNER".to_owned(), owner),
    ]);
    let config = Config::load(&Source {
        file: Some(("agent.example.toml".into(), text)),
        drop_ins: Vec::new(),
        env,
    })
    .unwrap();
    assert_eq!(config.control_url, "https://control.example.com");
    assert_eq!(
        config.slice.path,
        std::path::PathBuf::from("/data/home-coder")
    );
    assert_eq!(config.cloudflared.metrics.to_string(), "127.0.0.1:20241");
    assert_eq!(config.heartbeat.interval.as_secs(), 30);
}
