//! How vm-agent is configured and started, as agreed between the programs that start it
//! (control's local provider, the tests) and vm-agent itself, which in turn starts cloudflared.
//!
//! [`AgentToml`] is `agent.toml` key for key: what control writes for a VM is what vm-agent
//! reads, through the same type, so the two cannot drift. vm-agent fills in its defaults for
//! absent keys and validates the values; this type only fixes the keys and their types.
//! vm-agent refuses unknown keys, so a key is added here before anything writes it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// The environment variable vm-agent, and cloudflared after it, read a tunnel token from.
pub const TUNNEL_TOKEN_ENV: &str = "TUNNEL_TOKEN";

/// Prefix of the environment variables that override vm-agent's file (`VM_AGENT_SLICE__PATH`).
/// Whoever starts a VM's vm-agent removes its own from the agent's environment.
pub const ENV_PREFIX: &str = "VM_AGENT_";

/// Variables of a supervisor's own environment that no child it starts may inherit: systemd's
/// notify socket and watchdog (systemd would take the child's messages for the supervisor's),
/// and the tunnel token (a child is handed its own token explicitly, never the supervisor's by
/// accident). Control strips them from local VMs' vm-agents, vm-agent from cloudflared.
pub const SUPERVISOR_ONLY_ENV: [&str; 4] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    TUNNEL_TOKEN_ENV,
];

/// `agent.toml`. Numbers and booleans may also be given as text, as environment overrides
/// are (`VM_AGENT_HEARTBEAT__INTERVAL_S=30`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToml {
    pub agent_id: String,
    pub image_version: String,
    pub control_url: String,
    /// Allows an `http://` control URL (tests and local VMs only).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_insecure_control: Option<bool>,
    /// PEM file of CA certificates trusted for control's certificate besides the system's: an
    /// operator's own PKI, baked into the image (a local VM's machine layer, a test CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub cloudflared: CloudflaredToml,
    #[serde(default, skip_serializing_if = "is_default")]
    pub slice: SliceToml,
    #[serde(default, skip_serializing_if = "is_default")]
    pub heartbeat: HeartbeatToml,
    /// Present on a clone whose slice is copied on the VM itself (Hetzner: volumes cannot be
    /// copied by the API): where the source's slice comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_from: Option<CloneFromToml>,
}

/// `[clone_from]`: on its first boot a clone copies the source Agent's slice into its own.
/// `vm-agent clone-slice` (its own unit: it mounts a file system and keeps owners, which
/// vm-agent's unit may not) copies the source volume's `<slice below its mount point>`
/// (`home-coder`) into this VM's slice, and vm-agent reports the copy's progress in its
/// heartbeats ([`crate::agent::CloneReport`]). Exactly one of `device` and `directory`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneFromToml {
    /// The Agent whose slice is copied.
    pub source_agent: String,
    /// The block device of the source's slice volume, mounted read-only for the copy; it may
    /// appear only after the VM has booted (Hetzner attaches it then:
    /// `/dev/disk/by-id/scsi-0HC_Volume_<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    /// Or a directory where the source volume's root is mounted by someone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<PathBuf>,
}

/// `[cloudflared]`: the tunnel and how it is supervised. The suffix of a key is its unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudflaredToml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `host:port` on loopback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub ready_poll_ms: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub unready_restart_after_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_grace_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff_initial_ms: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff_max_ms: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub stable_after_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub crash_loop_restarts: Option<u32>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub crash_loop_window_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub failed_retry_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub log_lines_per_minute: Option<u32>,
}

/// `[slice]`: the persistent slice vm-agent guards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceToml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The mount table read to tell a mount point from a plain directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountinfo: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub check_interval_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub nearly_full_percent: Option<u8>,
}

/// `[heartbeat]`: reporting to control.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(clippy::struct_field_names)] // the suffix is the unit in the config key
pub struct HeartbeatToml {
    /// Until control answers with its own.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval_s: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_s: Option<u64>,
    /// Ceiling of the jittered backoff while control is unreachable.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff_max_s: Option<u64>,
}

impl AgentToml {
    /// The file's text. Fails only on a path that is not UTF-8.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Accepts a number or boolean either native (from the file) or as text (from the
/// environment, where everything is text).
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Native(T),
        Text(String),
    }
    match Option::<Either<T>>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Either::Native(value)) => Ok(Some(value)),
        Some(Either::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_reads_back_as_written() {
        // Every key set: see the golden file in tests/golden.rs.
        let minimal = AgentToml {
            agent_id: "agt_1".to_owned(),
            image_version: "2026.11.0".to_owned(),
            control_url: "https://control.example".to_owned(),
            ..AgentToml::default()
        };
        let text = minimal.to_toml().unwrap();
        assert_eq!(
            toml::from_str::<AgentToml>(&text).unwrap(),
            minimal,
            "{text}"
        );
    }

    #[test]
    fn absent_sections_are_not_written_and_numbers_may_be_text() {
        let text = AgentToml::default().to_toml().unwrap();
        assert!(!text.contains('['), "{text}");
        let file: AgentToml = toml::from_str(
            "agent_id = \"a\"\nimage_version = \"v\"\ncontrol_url = \"u\"\n\
             allow_insecure_control = \"true\"\n[heartbeat]\ninterval_s = \" 7 \"\n",
        )
        .unwrap();
        assert_eq!(
            (file.allow_insecure_control, file.heartbeat.interval_s),
            (Some(true), Some(7))
        );
        let unknown = toml::from_str::<AgentToml>(
            "agent_id = \"a\"\nimage_version = \"v\"\ncontrol_url = \"u\"\n[slice]\npaht = \"/x\"\n",
        );
        assert!(unknown.unwrap_err().to_string().contains("paht"));
    }
}
