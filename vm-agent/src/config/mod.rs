//! Configuration: defaults, then the file (`/etc/vm-agent/agent.toml` or `--config`), then
//! its drop-ins, then `VM_AGENT_*` environment variables, nested keys joined with `__`
//! (`VM_AGENT_CLOUDFLARED__BINARY`). The tunnel token may come from `TUNNEL_TOKEN` instead of
//! a file.
//!
//! The drop-ins are the `*.toml` files of the directory named after the file with `.d` for
//! `.toml` (`/etc/vm-agent/agent.d/` beside `agent.toml`), applied in the lexical order of
//! their names, each key they set replacing the one before it (tables are merged key by key,
//! anything else replaced whole). That lets the layers stay apart: the image bakes what every
//! VM of a release shares (`agent.d/10-image.toml`), cloud-init delivers what is particular to
//! one Agent (`agent.toml`), and neither rewrites the other's file.
//!
//! The file's keys and their types are `control_api::agent_config::AgentToml`, the very type
//! control writes the file with; this module adds the defaults, the environment and the checks.
//!
//! Everything is read and validated before anything starts, and every error names the key and
//! where it came from. This file reads the inputs and merges them; `validate.rs` turns the
//! merged file into a [`Config`], key by key, with the defaults. Tests build a [`Source`] by
//! hand; nothing here reads the process environment except [`Source::from_process`].

mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control_api::agent_config::AgentToml;
use validate::validate;

/// Where the config file is by default.
pub const DEFAULT_PATH: &str = "/etc/vm-agent/agent.toml";
/// Prefix of the environment variables that override the file.
pub use control_api::agent_config::ENV_PREFIX;
/// The environment variable cloudflared itself reads its token from.
pub use control_api::agent_config::TUNNEL_TOKEN_ENV;

/// The raw inputs: the file's text (with its path), its drop-ins' and the environment.
#[derive(Clone, Default)]
pub struct Source {
    pub file: Option<(PathBuf, String)>,
    /// The drop-ins' texts with their paths, in the order they apply.
    pub drop_ins: Vec<(PathBuf, String)>,
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment may hold the tunnel token: show names only.
        f.debug_struct("Source")
            .field("file", &self.file.as_ref().map(|(path, _)| path))
            .field(
                "drop_ins",
                &self
                    .drop_ins
                    .iter()
                    .map(|(path, _)| path)
                    .collect::<Vec<_>>(),
            )
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Source {
    /// Reads `path`, its drop-ins and this process's `VM_AGENT_*` and `TUNNEL_TOKEN`
    /// variables.
    #[allow(clippy::disallowed_methods)] // the one place that reads the process environment
    pub fn from_process(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: "--config".to_owned(),
            origin: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let env = std::env::vars()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) || name == TUNNEL_TOKEN_ENV)
            .collect();
        Ok(Self {
            file: Some((path.to_owned(), text)),
            drop_ins: read_drop_ins(path)?,
            env,
        })
    }
}

impl Source {
    /// The file with its drop-ins laid over it, not yet checked, and which drop-in set each
    /// key it set (by dotted key).
    pub fn file_layers(&self) -> Result<(toml::Table, BTreeMap<String, String>), ConfigError> {
        let mut table = match &self.file {
            Some((path, text)) => parse_table(path, text)?,
            None => toml::Table::new(),
        };
        let mut origins = BTreeMap::new();
        for (path, text) in &self.drop_ins {
            let layer = parse_table(path, text)?;
            merge(
                &mut table,
                layer,
                "",
                &path.display().to_string(),
                &mut origins,
            );
        }
        Ok((table, origins))
    }
}

/// The drop-in directory of the config file `path`: `agent.d` for `agent.toml`.
pub fn drop_in_dir(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or(path.as_os_str());
    let mut name = stem.to_os_string();
    name.push(".d");
    path.with_file_name(name)
}

/// The `*.toml` files of `path`'s drop-in directory, by name; none when it does not exist.
fn read_drop_ins(path: &Path) -> Result<Vec<(PathBuf, String)>, ConfigError> {
    let dir = drop_in_dir(path);
    let unreadable = |at: &Path, e: std::io::Error| ConfigError {
        key: "--config".to_owned(),
        origin: at.display().to_string(),
        message: format!("cannot read the config drop-in: {e}"),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(&dir, e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(&dir, e))?;
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(e) => Err(unreadable(&path, e)),
        })
        .collect()
}

/// Parses one TOML file, naming the offending text and the file when it is malformed.
fn parse_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str::<toml::Table>(text).map_err(|e| ConfigError {
        key: e
            .span()
            .and_then(|span| text.get(span))
            .map_or_else(|| "(file)".to_owned(), |s| s.trim().to_owned()),
        origin: path.display().to_string(),
        message: e.message().to_owned(),
    })
}

/// Lays `layer` over `table`: a table merges key by key, any other value replaces the one
/// before it. Records in `origins` the dotted key of each value `layer` set.
fn merge(
    table: &mut toml::Table,
    layer: toml::Table,
    prefix: &str,
    origin: &str,
    origins: &mut BTreeMap<String, String>,
) {
    for (key, value) in layer {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (table.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                merge(below, above, &dotted, origin, origins);
            }
            (_, value) => {
                origins.retain(|k, _| k != &dotted && !k.starts_with(&format!("{dotted}.")));
                origins.insert(dotted, origin.to_owned());
                table.insert(key, value);
            }
        }
    }
}

/// A configuration error: which key, from where, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: `{key}` {message}")]
pub struct ConfigError {
    pub key: String,
    /// The file or environment variable the value came from.
    pub origin: String,
    pub message: String,
}

/// How cloudflared gets its tunnel token. Never on its command line.
#[derive(Clone, PartialEq, Eq)]
pub enum TunnelToken {
    /// Passed as `--token-file`.
    File(PathBuf),
    /// Passed in cloudflared's environment as `TUNNEL_TOKEN`.
    Environment(String),
}

impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Environment(_) => f.write_str("Environment([redacted])"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cloudflared {
    pub binary: PathBuf,
    pub token: TunnelToken,
    /// Where cloudflared serves `/ready` and `/metrics`; always a loopback address.
    pub metrics: SocketAddr,
    pub extra_args: Vec<String>,
    pub ready_poll: Duration,
    /// How long it may stay without ready connections before it is restarted.
    pub unready_restart_after: Duration,
    /// Between SIGTERM and SIGKILL when stopping it.
    pub stop_grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Ready for this long in one run: the backoff starts over.
    pub stable_after: Duration,
    /// This many restarts within `crash_loop_window` is a crash loop.
    pub crash_loop_restarts: u32,
    pub crash_loop_window: Duration,
    /// The wait after a permanent failure (exit 255: usage error or invalid token).
    pub failed_retry: Duration,
    /// How many of cloudflared's stderr lines reach the log per minute.
    pub log_lines_per_minute: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub path: PathBuf,
    pub owner: String,
    pub owner_uid: u32,
    /// The mount table read to tell a mount point from a plain directory.
    pub mountinfo: PathBuf,
    pub check_interval: Duration,
    pub nearly_full_percent: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Until control says otherwise.
    pub interval: Duration,
    pub timeout: Duration,
    /// Ceiling of the jittered backoff while control is unreachable.
    pub backoff_max: Duration,
}

/// Where a clone's source slice comes from (`[clone_from]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneSource {
    /// The source's volume, mounted read-only by `vm-agent clone-slice`.
    Device(PathBuf),
    /// A directory where the source volume's root is already mounted.
    Directory(PathBuf),
}

impl fmt::Display for CloneSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(path) => write!(f, "device {}", path.display()),
            Self::Directory(path) => write!(f, "directory {}", path.display()),
        }
    }
}

/// `[clone_from]`: this Agent is a clone whose slice starts as a copy of `source_agent`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneFrom {
    pub source_agent: String,
    pub source: CloneSource,
}

/// CA certificates trusted for control's certificate besides the system's
/// (`control_ca_file`), read and checked at load.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlCa {
    pub file: PathBuf,
    /// Each certificate of the file, DER.
    pub certificates: Vec<Vec<u8>>,
}

impl fmt::Debug for ControlCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlCa")
            .field("file", &self.file)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub agent_id: String,
    pub image_version: String,
    pub control_url: String,
    /// Trusted for control's certificate besides the system's roots.
    pub control_ca: Option<ControlCa>,
    pub bootstrap_token_file: PathBuf,
    pub credential_file: PathBuf,
    pub status_socket: PathBuf,
    pub log_level: log::LevelFilter,
    pub cloudflared: Cloudflared,
    pub slice: Slice,
    pub heartbeat: Heartbeat,
    /// Only on a clone whose slice is copied on the VM.
    pub clone_from: Option<CloneFrom>,
}

impl Config {
    /// Reads and validates the configuration; checks the files it names can be read.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let file_origin = source.file.as_ref().map_or_else(
            || "defaults".to_owned(),
            |(path, _)| path.display().to_string(),
        );
        let (mut table, from_drop_in) = source.file_layers()?;
        let mut from_env = BTreeMap::new();
        for (name, value) in &source.env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            from_env.insert(path.join("."), name.clone());
            insert(&mut table, &path, value.clone());
        }
        let origin_of = |key: &str| {
            let set = |k: &String| key == k.as_str() || key.starts_with(&format!("{k}."));
            from_env
                .iter()
                .find(|(k, _)| set(k))
                .or_else(|| from_drop_in.iter().find(|(k, _)| set(k)))
                .map_or_else(|| file_origin.clone(), |(_, origin)| origin.clone())
        };
        let raw: AgentToml =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let message = e.inner().to_string();
                let key = control_api::error_field(&e.path().to_string(), &message);
                ConfigError {
                    origin: origin_of(&key),
                    key,
                    message,
                }
            })?;
        let fail = |key: &str, message: String| ConfigError {
            key: key.to_owned(),
            origin: origin_of(key),
            message,
        };
        validate(raw, source, &fail)
    }
}

/// Sets `path` in `table` to the text `value`, creating tables on the way.
fn insert(table: &mut toml::Table, path: &[String], value: String) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), toml::Value::String(value));
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use control_api::agent_config::{CloneFromToml, CloudflaredToml, HeartbeatToml, SliceToml};

    use super::*;

    /// The file control writes, through the type it writes it with, is the configuration
    /// vm-agent runs with: every key written is read, none is lost or renamed on the way.
    #[test]
    #[allow(clippy::too_many_lines)] // every key, as written and as read
    fn a_written_agent_toml_loads_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for name in ["bootstrap-token", "tunnel-token", "cloudflared"] {
            std::fs::write(path(name), "x").unwrap();
        }
        let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        let file = AgentToml {
            agent_id: "agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ".to_owned(),
            image_version: "2026.11.0".to_owned(),
            control_url: "http://127.0.0.1:9/".to_owned(),
            allow_insecure_control: Some(true),
            control_ca_file: None,
            bootstrap_token_file: Some(path("bootstrap-token")),
            credential_file: Some(path("state/credential")),
            status_socket: Some(path("status.sock")),
            log_level: Some("debug".to_owned()),
            cloudflared: CloudflaredToml {
                binary: Some(path("cloudflared")),
                token_file: Some(path("tunnel-token")),
                metrics: Some("127.0.0.1:20999".to_owned()),
                extra_args: vec!["--grace-period".to_owned(), "1s".to_owned()],
                ready_poll_ms: Some(100),
                unready_restart_after_s: Some(1),
                stop_grace_s: Some(2),
                backoff_initial_ms: Some(100),
                backoff_max_ms: Some(800),
                stable_after_s: Some(3),
                crash_loop_restarts: Some(4),
                crash_loop_window_s: Some(60),
                failed_retry_s: Some(30),
                log_lines_per_minute: Some(7),
            },
            slice: SliceToml {
                path: Some(path("data/home-coder")),
                owner: Some(owner.name.clone()),
                mountinfo: Some(path("mountinfo")),
                check_interval_s: Some(5),
                nearly_full_percent: Some(90),
            },
            heartbeat: HeartbeatToml {
                interval_s: Some(11),
                timeout_s: Some(2),
                backoff_max_s: Some(12),
            },
            clone_from: Some(CloneFromToml {
                source_agent: "agt_01JDQ6SOURCE0000000000000".to_owned(),
                device: Some(PathBuf::from("/dev/disk/by-id/scsi-0HC_Volume_123")),
                directory: None,
            }),
        };
        let source = Source {
            file: Some((path("agent.toml"), file.to_toml().unwrap())),
            ..Source::default()
        };
        let config = Config::load(&source).unwrap();
        assert_eq!(
            config,
            Config {
                agent_id: file.agent_id.clone(),
                image_version: file.image_version.clone(),
                control_url: "http://127.0.0.1:9".to_owned(),
                control_ca: None,
                bootstrap_token_file: path("bootstrap-token"),
                credential_file: path("state/credential"),
                status_socket: path("status.sock"),
                log_level: log::LevelFilter::Debug,
                cloudflared: Cloudflared {
                    binary: path("cloudflared"),
                    token: TunnelToken::File(path("tunnel-token")),
                    metrics: "127.0.0.1:20999".parse().unwrap(),
                    extra_args: vec!["--grace-period".to_owned(), "1s".to_owned()],
                    ready_poll: Duration::from_millis(100),
                    unready_restart_after: Duration::from_secs(1),
                    stop_grace: Duration::from_secs(2),
                    backoff_initial: Duration::from_millis(100),
                    backoff_max: Duration::from_millis(800),
                    stable_after: Duration::from_secs(3),
                    crash_loop_restarts: 4,
                    crash_loop_window: Duration::from_mins(1),
                    failed_retry: Duration::from_secs(30),
                    log_lines_per_minute: 7,
                },
                slice: Slice {
                    path: path("data/home-coder"),
                    owner: owner.name,
                    owner_uid: owner.uid.as_raw(),
                    mountinfo: path("mountinfo"),
                    check_interval: Duration::from_secs(5),
                    nearly_full_percent: 90,
                },
                heartbeat: Heartbeat {
                    interval: Duration::from_secs(11),
                    timeout: Duration::from_secs(2),
                    backoff_max: Duration::from_secs(12),
                },
                clone_from: Some(CloneFrom {
                    source_agent: "agt_01JDQ6SOURCE0000000000000".to_owned(),
                    source: CloneSource::Device(PathBuf::from(
                        "/dev/disk/by-id/scsi-0HC_Volume_123"
                    )),
                }),
            }
        );
    }

    /// `control_ca_file`: its certificates are read at load, to be trusted for control's.
    #[test]
    fn a_control_ca_file_is_read_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for name in ["bootstrap-token", "tunnel-token", "cloudflared"] {
            std::fs::write(path(name), "x").unwrap();
        }
        let (first, second) = (
            test_support::tls::TestCa::new("one"),
            test_support::tls::TestCa::new("two"),
        );
        std::fs::write(
            path("ca.pem"),
            format!("{}{}", first.cert_pem, second.cert_pem),
        )
        .unwrap();
        let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        let file = AgentToml {
            agent_id: "agt_1".to_owned(),
            image_version: "2026.11.0".to_owned(),
            control_url: "https://control.example.test".to_owned(),
            control_ca_file: Some(path("ca.pem")),
            bootstrap_token_file: Some(path("bootstrap-token")),
            cloudflared: CloudflaredToml {
                binary: Some(path("cloudflared")),
                token_file: Some(path("tunnel-token")),
                ..CloudflaredToml::default()
            },
            slice: SliceToml {
                owner: Some(owner.name),
                ..SliceToml::default()
            },
            ..AgentToml::default()
        };
        let source = Source {
            file: Some((path("agent.toml"), file.to_toml().unwrap())),
            ..Source::default()
        };
        let ca = Config::load(&source).unwrap().control_ca.unwrap();
        assert_eq!(ca.file, path("ca.pem"));
        assert_eq!(ca.certificates.len(), 2);
        assert!(
            format!("{ca:?}").len() < 200,
            "no certificate bytes in Debug"
        );
    }

    /// The delivered file, then the machine's drop-ins: each key of a later layer replaces
    /// the earlier one, tables merge key by key, what no drop-in names stays as delivered,
    /// and the environment still comes last.
    #[test]
    fn drop_ins_lay_their_keys_over_the_file_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/vm-agent");
        std::fs::create_dir_all(etc.join("agent.d")).unwrap();
        let path = |name: &str| etc.join(name);
        for name in [
            "bootstrap-token",
            "rooted-bootstrap-token",
            "cloudflared",
            "tunnel-token",
        ] {
            std::fs::write(path(name), "x").unwrap();
        }
        let owner = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        std::fs::write(
            path("agent.toml"),
            "agent_id = \"agt_1\"\nimage_version = \"2026.12.0\"\n\
             control_url = \"https://control.example.test\"\n\
             bootstrap_token_file = \"/etc/vm-agent/bootstrap-token\"\n\
             [cloudflared]\ntoken_file = \"/etc/vm-agent/tunnel-token\"\n\
             metrics = \"127.0.0.1:20241\"\n[heartbeat]\ninterval_s = 30\ntimeout_s = 4\n",
        )
        .unwrap();
        // Applied by name: 10 before 20, whatever order they were written in.
        std::fs::write(
            path("agent.d/20-late.toml"),
            "[heartbeat]\ninterval_s = 7\n[slice]\nnearly_full_percent = 80\n",
        )
        .unwrap();
        std::fs::write(
            path("agent.d/10-image.toml"),
            format!(
                "bootstrap_token_file = \"{}\"\n[cloudflared]\nbinary = \"{}\"\n\
                 token_file = \"{}\"\n[heartbeat]\ninterval_s = 5\n\
                 [slice]\nowner = \"{owner}\"\nnearly_full_percent = 95\n",
                path("rooted-bootstrap-token").display(),
                path("cloudflared").display(),
                path("tunnel-token").display(),
            ),
        )
        .unwrap();
        std::fs::write(path("agent.d/30-notes.txt"), "not = toml [").unwrap();

        let mut source = Source::from_process(&path("agent.toml")).unwrap();
        assert_eq!(
            source
                .drop_ins
                .iter()
                .map(|(p, _)| p.clone())
                .collect::<Vec<_>>(),
            [path("agent.d/10-image.toml"), path("agent.d/20-late.toml")]
        );
        source.env = BTreeMap::from([("VM_AGENT_HEARTBEAT__TIMEOUT_S".to_owned(), "3".to_owned())]);
        let config = Config::load(&source).unwrap();
        assert_eq!(config.agent_id, "agt_1");
        assert_eq!(config.control_url, "https://control.example.test");
        assert_eq!(config.bootstrap_token_file, path("rooted-bootstrap-token"));
        assert_eq!(config.cloudflared.binary, path("cloudflared"));
        assert_eq!(
            config.cloudflared.token,
            TunnelToken::File(path("tunnel-token"))
        );
        assert_eq!(config.cloudflared.metrics.to_string(), "127.0.0.1:20241");
        assert_eq!(config.heartbeat.interval, Duration::from_secs(7));
        assert_eq!(config.heartbeat.timeout, Duration::from_secs(3));
        assert_eq!(config.slice.owner, owner);
        assert_eq!(config.slice.nearly_full_percent, 80);

        // A bad value is blamed on the drop-in that set it, not on agent.toml.
        std::fs::write(
            path("agent.d/20-late.toml"),
            "[heartbeat]\ninterval_s = 0\n",
        )
        .unwrap();
        let error = Config::load(&Source::from_process(&path("agent.toml")).unwrap()).unwrap_err();
        assert_eq!(error.key, "heartbeat.interval_s");
        assert_eq!(
            error.origin,
            path("agent.d/20-late.toml").display().to_string()
        );
        // A malformed drop-in is named.
        std::fs::write(path("agent.d/20-late.toml"), "[heartbeat\n").unwrap();
        let error = Config::load(&Source::from_process(&path("agent.toml")).unwrap()).unwrap_err();
        assert_eq!(
            error.origin,
            path("agent.d/20-late.toml").display().to_string()
        );
        // Without a drop-in directory, the file alone.
        let lone = dir.path().join("lone.toml");
        std::fs::write(&lone, "agent_id = \"a\"\n").unwrap();
        assert!(Source::from_process(&lone).unwrap().drop_ins.is_empty());
        assert_eq!(drop_in_dir(&lone), dir.path().join("lone.d"));
    }
}
