//! The rig vm-agent's integration tests share: a temp dir laid out like a VM (config, token
//! files, a fake mount table with the slice, the stand-in cloudflared's script and launch log),
//! a stand-in control, and the real `vm-agent` binary.

#![allow(dead_code, unreachable_pub)] // each test file uses its own part of the rig
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::fmt::Write as _;
use std::io::BufRead;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use control_api::agent_config::{
    AgentToml, CloudflaredToml, HeartbeatToml, SUPERVISOR_ONLY_ENV, SliceToml,
};
use serde_json::Value;
use test_support::{Daemon, free_port, workspace_bin};

pub const TUNNEL_TOKEN: &str = "eyJhIjoiYWNjb3VudCIsInQiOiJ0dW5uZWwiLCJzIjoic2VjcmV0In0";
pub const BOOTSTRAP: &str = "bootstrap-5f2c8e1a9b7d4c3e";

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub metrics_port: u16,
    pub control_port: u16,
    pub control: Option<Daemon>,
}

impl Rig {
    /// A VM with a mounted, writable slice and a stand-in control; cloudflared will be ready.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rig = Self {
            metrics_port: free_port(),
            control_port: free_port(),
            control: None,
            dir,
        };
        std::fs::create_dir_all(rig.slice()).unwrap();
        std::fs::write(rig.path("tunnel-token"), TUNNEL_TOKEN).unwrap();
        std::fs::write(rig.path("bootstrap-token"), BOOTSTRAP).unwrap();
        rig.mount_slice(false);
        rig.script(&serde_json::json!({}));
        rig
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn slice(&self) -> PathBuf {
        self.path("data/home-coder")
    }

    /// Writes the fake mount table: the root, plus the slice unless `missing`.
    pub fn mount_table(&self, slice_options: Option<&str>) {
        let mut table = String::from("22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n");
        if let Some(options) = slice_options {
            let _ = writeln!(
                table,
                "61 22 0:52 / {} {options} shared:30 - ext4 /dev/sdb rw",
                self.slice().display()
            );
        }
        std::fs::write(self.path("mountinfo"), table).unwrap();
    }

    pub fn mount_slice(&self, read_only: bool) {
        self.mount_table(Some(if read_only {
            "ro,relatime"
        } else {
            "rw,relatime"
        }));
    }

    /// The stand-in cloudflared's script (see its source).
    pub fn script(&self, script: &Value) {
        let path = self.path("script.json");
        let temp = self.path("script.json.tmp");
        std::fs::write(&temp, script.to_string()).unwrap();
        std::fs::rename(temp, path).unwrap();
    }

    /// The agent's configuration with fast timings, written to `agent.toml`.
    pub fn config(&self) -> PathBuf {
        let uid = std::fs::metadata(self.dir.path())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .unwrap()
            .unwrap()
            .name;
        let file = AgentToml {
            agent_id: "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
            image_version: "2026.11.0".to_owned(),
            control_url: format!("http://127.0.0.1:{}", self.control_port),
            allow_insecure_control: Some(true),
            control_ca_file: None,
            bootstrap_token_file: Some(self.path("bootstrap-token")),
            credential_file: Some(self.path("state/credential")),
            status_socket: Some(self.path("run/status.sock")),
            log_level: None,
            cloudflared: CloudflaredToml {
                binary: Some(workspace_bin("stand-in-cloudflared")),
                token_file: Some(self.path("tunnel-token")),
                metrics: Some(format!("127.0.0.1:{}", self.metrics_port)),
                extra_args: Vec::new(),
                ready_poll_ms: Some(100),
                unready_restart_after_s: Some(1),
                stop_grace_s: Some(2),
                backoff_initial_ms: Some(100),
                backoff_max_ms: Some(800),
                stable_after_s: Some(1),
                crash_loop_restarts: Some(4),
                crash_loop_window_s: Some(60),
                failed_retry_s: Some(30),
                log_lines_per_minute: None,
            },
            slice: SliceToml {
                path: Some(self.slice()),
                owner: Some(owner),
                mountinfo: Some(self.path("mountinfo")),
                check_interval_s: Some(1),
                // The slice is a directory on the host's disk: only a disk that is really
                // full counts, so how full the test machine is never decides a test.
                nearly_full_percent: Some(100),
            },
            // Control answers with 1 s: heartbeats every second prove the agent follows
            // control's interval.
            heartbeat: HeartbeatToml {
                interval_s: Some(30),
                timeout_s: Some(2),
                backoff_max_s: Some(2),
            },
            clone_from: None,
        };
        let path = self.path("agent.toml");
        std::fs::write(&path, file.to_toml().unwrap()).unwrap();
        path
    }

    /// Starts the stand-in control (again, on the same port and record, if it ran before).
    pub fn start_control(&mut self) {
        let mut command = Command::new(workspace_bin("stand-in-control"));
        command.args([
            "--listen",
            &format!("127.0.0.1:{}", self.control_port),
            "--record",
            &self.path("control.jsonl").display().to_string(),
            "--bootstrap",
            BOOTSTRAP,
            "--interval-s",
            "1",
        ]);
        self.control = Some(Daemon::start(command, self.control_port));
    }

    pub fn stop_control(&mut self) {
        if let Some(control) = self.control.take() {
            control.stop();
        }
    }

    /// Starts `vm-agent run` with `config` and `env`, waiting for its status socket.
    pub fn start_agent(&self, config: &Path, env: &[(&str, String)]) -> Daemon {
        let agent = self.spawn_agent(config, env);
        agent.wait_until("the status socket", Duration::from_secs(20), || {
            self.path("run/status.sock").exists()
        });
        agent
    }

    pub fn spawn_agent(&self, config: &Path, env: &[(&str, String)]) -> Daemon {
        let mut command = Command::new(workspace_bin("vm-agent"));
        command
            .args(["run", "--config"])
            .arg(config)
            .env("STAND_IN_CLOUDFLARED_SCRIPT", self.path("script.json"))
            .env("STAND_IN_CLOUDFLARED_LOG", self.path("launches.jsonl"));
        for name in SUPERVISOR_ONLY_ENV {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        Daemon::spawn(command, 0)
    }

    fn json_lines(&self, name: &str) -> Vec<Value> {
        let Ok(file) = std::fs::File::open(self.path(name)) else {
            return Vec::new();
        };
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect()
    }

    /// What the stand-in cloudflared recorded: starts, signals, exits.
    pub fn launches(&self) -> Vec<Value> {
        self.json_lines("launches.jsonl")
    }

    pub fn starts(&self) -> Vec<Value> {
        self.launches()
            .into_iter()
            .filter(|e| e["event"] == "start")
            .collect()
    }

    /// What the stand-in control recorded: registrations and heartbeats.
    pub fn control_events(&self) -> Vec<Value> {
        self.json_lines("control.jsonl")
    }

    pub fn heartbeats(&self) -> Vec<Value> {
        self.control_events()
            .into_iter()
            .filter(|e| e["event"] == "heartbeat" && e["ok"] == true)
            .map(|e| e["heartbeat"].clone())
            .collect()
    }

    /// The running agent's status snapshot, read from its socket; `Null` while the socket is
    /// not up yet (an agent just started, on a loaded machine), so a condition waiting for a
    /// state looks again instead of panicking.
    pub fn status(&self) -> Value {
        let Ok(mut stream) = UnixStream::connect(self.path("run/status.sock")) else {
            return Value::Null;
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Polls `condition` for up to `within`, with the agent's log in the failure message.
pub fn eventually(agent: &Daemon, what: &str, within: Duration, condition: impl FnMut() -> bool) {
    agent.wait_until(what, within, condition);
}

/// Checks the unit file `vm-agent/systemd/<name>` holds each of `required` and, installed with
/// `ExecStart` pointing at this build's binary, passes `systemd-analyze verify` (skipped without
/// systemd-analyze).
pub fn verify_unit(name: &str, required: &[&str]) {
    if !test_support::have_program("systemd-analyze") {
        return;
    }
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(name),
    )
    .unwrap();
    for required in required {
        assert!(unit.contains(required), "{name} lacks {required}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let installed = unit.replace(
        "/usr/local/bin/vm-agent",
        &workspace_bin("vm-agent").display().to_string(),
    );
    std::fs::write(&path, installed).unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}
