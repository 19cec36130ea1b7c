//! Configuration: defaults, then the TOML file, then environment variables and flags (clap
//! reads both, flags winning). Errors name the file and the key. Tests build a [`Config`] from
//! text and [`Overrides`] directly, never through the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::app::Settings;
use crate::providers::Secret;

/// Values given on the command line or in `CONTROL_*` environment variables.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub tokens: EnvTokens,
}

/// Provider API tokens from the environment variables the providers' own tools read, used
/// where the file names no `token_file`.
#[derive(Clone, Debug, Default)]
pub struct EnvTokens {
    /// `HCLOUD_TOKEN`.
    pub hetzner: Option<Secret>,
    /// `CLOUDFLARE_API_TOKEN`.
    pub cloudflare: Option<Secret>,
    /// `FLY_API_TOKEN`.
    pub fly: Option<Secret>,
}

/// The file's shape. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database: Option<String>,
    database_max_connections: Option<u32>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    usage: UsageSection,
    #[serde(default)]
    audit: AuditSection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    agents: AgentsSection,
    #[serde(default)]
    reconciler: ReconcilerSection,
    #[serde(default)]
    sweeper: SweeperSection,
    #[serde(default)]
    local_provider: LocalSection,
    #[serde(default)]
    plain_vms: PlainVmsSection,
    #[serde(default)]
    providers: ProvidersSection,
    hetzner: Option<HetznerSection>,
    cloudflare: Option<CloudflareSection>,
    fly: Option<FlySection>,
    tls: Option<TlsSection>,
}

/// The `[tls]` section: control serves HTTPS (HTTP/1.1 over TLS 1.2 or 1.3) with this
/// certificate and key instead of plain HTTP. Both files are read at start and again on
/// SIGHUP; a renewed pair that cannot be used keeps the one in service.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM: the server's certificate first, then the intermediates its clients need.
    pub cert_file: PathBuf,
    /// PEM: the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The `[plain_vms]` section: what a Plain VM is made as when its request does not say.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PlainVmsSection {
    /// [default: cx22]
    server_type: Option<String>,
    /// [default: fsn1]
    location: Option<String>,
    /// A stock image by name or id [default: debian-12].
    image: Option<String>,
    /// The image's default user, who gets the keys and the one-time password [default: root,
    /// as on Hetzner's stock images].
    default_user: Option<String>,
}

/// The Plain VM defaults, each checked as a request's value would be.
fn plain_vm_defaults(
    path: &Path,
    section: &PlainVmsSection,
) -> Result<crate::app::PlainVmDefaults, ConfigError> {
    let defaults = crate::app::PlainVmDefaults::default();
    let pick = |key: &'static str, given: &Option<String>, default: String| match given {
        Some(value) if !crate::plain_vms::is_provider_name(value) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: format!(
                "{value:?} is not a provider name (1 to 63 of a-z, 0-9, '.', '_' and '-')"
            ),
        }),
        Some(value) => Ok(value.clone()),
        None => Ok(default),
    };
    Ok(crate::app::PlainVmDefaults {
        server_type: pick(
            "plain_vms.server_type",
            &section.server_type,
            defaults.server_type,
        )?,
        location: pick("plain_vms.location", &section.location, defaults.location)?,
        image: pick("plain_vms.image", &section.image, defaults.image)?,
        default_user: pick(
            "plain_vms.default_user",
            &section.default_user,
            defaults.default_user,
        )?,
    })
}

/// The `[fly]` section: the Fly organization the legacy cohort of Agents runs in. New Agents
/// never go there; existing ones are imported (`POST /api/agents/import`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlySection {
    /// A file holding an API token of the organization, read at start, never logged
    /// [default: the `FLY_API_TOKEN` environment variable].
    pub token_file: Option<PathBuf>,
    /// The organization whose apps hold the legacy Agents.
    pub org_slug: String,
    /// [default: Fly's public endpoint]; a `provider-fakes fly` URL to try it by hand.
    pub base_url: Option<String>,
}

/// The `[cloudflare]` section: the account Agents' tunnels are made in and the zone their
/// hostnames (`<agent>.<[agents] domain>`, so the domain must be in this zone) live in.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudflareSection {
    /// A file holding an API token allowed to edit Cloudflare Tunnel and the zone's DNS
    /// [default: the `CLOUDFLARE_API_TOKEN` environment variable].
    pub token_file: Option<PathBuf>,
    pub account_id: String,
    pub zone_id: String,
    /// [default: Cloudflare's public endpoint]; a `provider-fakes cloudflare` URL by hand.
    pub base_url: Option<String>,
}

/// The `[hetzner]` section: a Hetzner Cloud project's API and what servers are made as.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HetznerSection {
    /// A file holding the project's API token (read and write), read at start, never logged
    /// [default: the `HCLOUD_TOKEN` environment variable].
    pub token_file: Option<PathBuf>,
    /// [default: Hetzner's public endpoint]; a `provider-fakes hetzner` URL to try it by hand.
    pub base_url: Option<String>,
    /// Where servers and volumes are made [default: fsn1].
    pub location: Option<String>,
    /// What servers are made as [default: cx22].
    pub server_type: Option<String>,
    /// The project's request budget an hour [default: 3600, Hetzner's]; Hetzner's answers
    /// (`RateLimit-Limit`) win when they report less.
    pub requests_per_hour: Option<u32>,
}

/// The `[providers]` section: which cloud new resources go to and where Agents' tunnels come
/// from. Each cloud a name here selects is configured in its own section.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProvidersSection {
    /// The cloud new Agents and Plain VMs are created on [default: local].
    #[serde(default)]
    pub default: CloudName,
    /// Where each Agent's tunnel is made [default: local].
    #[serde(default)]
    pub tunnels: TunnelsName,
}

/// The clouds this release can create servers on.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CloudName {
    /// VMs on this machine ([`crate::providers::local`]), for laptops and tests.
    #[default]
    Local,
    /// Hetzner Cloud ([`crate::providers::hetzner`]); needs the `[hetzner]` section.
    Hetzner,
}

/// The tunnel providers this release can make tunnels with.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TunnelsName {
    /// Records kept by the local provider, given to the stand-in cloudflared.
    #[default]
    Local,
    /// Cloudflare Tunnel ([`crate::providers::cloudflare`]); needs the `[cloudflare]` section.
    Cloudflare,
}

/// The `[local_provider]` section: the programs local VMs run and whom they report to.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    /// The vm-agent binary [default: next to control, built from the workspace if need be].
    pub vm_agent: Option<PathBuf>,
    /// The cloudflared (stand-in) binary local VMs supervise.
    pub cloudflared: Option<PathBuf>,
    /// Control URLs local VMs report to, one per VM by its id [default: this replica].
    #[serde(default)]
    pub control_urls: Vec<String>,
    /// A PEM file of CA certificates local VMs' vm-agents trust for control's certificate
    /// besides the system's (`control_ca_file` in their `agent.toml`): what an image built for
    /// an operator's own PKI carries. For a `[tls]` certificate from a private CA.
    pub control_ca_file: Option<PathBuf>,
    /// What an Agent's local VM is: `processes` (a vm-agent process; the default) or `qemu`
    /// (a real VM booted from a baked image, [`crate::providers::local::QemuConfig`]).
    #[serde(default)]
    pub vms: LocalVms,
    /// `qemu` mode: where built releases are (`image/build --out DIR/<release>`); a release's
    /// `local` reference names a directory here [default: `<data_dir>/images`].
    pub images_dir: Option<PathBuf>,
    /// `qemu` mode: the emulator [default: `qemu-system-x86_64`].
    pub qemu: Option<PathBuf>,
    /// `qemu` mode: each VM's memory in `MiB` [default: 1024].
    pub memory_mib: Option<u32>,
    /// `qemu` mode: each VM's virtual CPUs [default: 1].
    pub cpus: Option<u32>,
    /// `qemu` mode: the size of each Agent's slice disk in `MiB` [default: 1024].
    pub slice_mib: Option<u32>,
    /// `qemu` mode: `tcg` (software emulation, works everywhere) or `kvm` [default: tcg].
    pub accel: Option<String>,
}

/// What an Agent's local VM is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalVms {
    #[default]
    Processes,
    Qemu,
}

impl LocalSection {
    /// How `qemu` mode runs VMs, when it is on.
    pub fn qemu_config(&self, data_dir: &Path) -> Option<crate::providers::local::QemuConfig> {
        (self.vms == LocalVms::Qemu).then(|| crate::providers::local::QemuConfig {
            qemu: self
                .qemu
                .clone()
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            images_dir: self
                .images_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("images")),
            memory_mib: self.memory_mib.unwrap_or(1024).max(256),
            cpus: self.cpus.unwrap_or(1).max(1),
            slice_mib: self.slice_mib.unwrap_or(1024).max(16),
            accel: self.accel.clone().unwrap_or_else(|| "tcg".to_owned()),
            // Under software emulation a guest's shutdown takes tens of seconds.
            shutdown_grace: Duration::from_secs(90),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsSection {
    heartbeat_interval_secs: Option<u64>,
    unhealthy_after_intervals: Option<u32>,
    write_every_heartbeats: Option<u32>,
    bootstrap_ttl_secs: Option<u64>,
    replica_timeout_secs: Option<u64>,
    preload_credentials: Option<bool>,
    agent_backoff_max_secs: Option<u64>,
    stop_grace_secs: Option<u64>,
    domain: Option<String>,
    tunnel_service: Option<String>,
    control_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcilerSection {
    interval_secs: Option<u64>,
    budget_fraction: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweeperSection {
    interval_secs: Option<u64>,
    remove: Option<bool>,
}

/// The `[audit]` section: signed checkpoints of the audit chain.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    /// How often the chain's head is signed, when it has grown [default: 900].
    checkpoint_interval_secs: Option<u64>,
    /// The ed25519 key checkpoints are signed with, made there on first start if missing
    /// [default: `audit-signing.key` in the data dir]. Replicas sharing a database should
    /// share it.
    signing_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageSection {
    rollup_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsSection {
    poll_interval_ms: Option<u64>,
    lease_secs: Option<u64>,
    max_attempts: Option<i64>,
    wait_limit_secs: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything `control` runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where `/metrics` is served, over plain HTTP; the API's own address (`listen`) when it
    /// is the same one, and then `/metrics` is served with the API as before.
    pub metrics_listen: SocketAddr,
    /// HTTPS for the API, when configured.
    pub tls: Option<TlsSection>,
    /// Provider tokens from the environment, for sections without a `token_file`.
    pub env_tokens: EnvTokens,
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub database: String,
    pub database_max_connections: u32,
    pub log_format: LogFormat,
    pub rollup_interval: Duration,
    /// How often the audit chain's head is signed (when it has grown).
    pub audit_checkpoint_interval: Duration,
    /// The key audit checkpoints are signed with.
    pub audit_signing_key: PathBuf,
    pub job_poll_interval: Duration,
    pub reconcile_interval: Duration,
    /// The share of each cloud's hourly request budget the reconciler may spend; it runs less
    /// often than `reconcile_interval` when a pass costs more.
    pub reconcile_budget_fraction: f64,
    pub sweep_interval: Duration,
    pub local: LocalSection,
    pub providers: ProvidersSection,
    pub hetzner: Option<HetznerSection>,
    pub cloudflare: Option<CloudflareSection>,
    pub fly: Option<FlySection>,
    pub settings: Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Loopback: a Prometheus on the same host scrapes it; exposing the API exposes nothing more.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9180";
pub const DEFAULT_DATA_DIR: &str = "control-data";
/// The reconciler's share of a cloud's hourly request budget: the rest is provisioning's.
pub const DEFAULT_RECONCILE_BUDGET_FRACTION: f64 = 0.25;

impl Config {
    /// Reads `file` (if given) and applies `overrides` on top.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        match file {
            None => Self::from_text(None, overrides),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_text(Some((path, &text)), overrides)
            }
        }
    }

    /// Builds the configuration from a file's text (with its path, for messages).
    pub fn from_text(
        file: Option<(&Path, &str)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let (path, parsed) = parse_file(file)?;
        check_providers(&path, &parsed)?;
        check_tls(&path, &parsed)?;
        let positive = |key, value, default| positive(&path, key, value, default);
        let defaults = Settings::default();
        let (listen, metrics_listen) = listen_addresses(&parsed, overrides);
        let data_dir = overrides
            .data_dir
            .clone()
            .or(parsed.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database = overrides
            .database
            .clone()
            .or(parsed.database)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("control.db").display()));
        let max_attempts = match parsed.jobs.max_attempts {
            Some(n) if n < 1 => {
                return Err(ConfigError::Invalid {
                    path,
                    key: "jobs.max_attempts",
                    message: "must be at least 1".to_owned(),
                });
            }
            other => other.unwrap_or(defaults.job_max_attempts),
        };
        let lease_default = defaults.job_lease.as_secs();
        let ingest = agents_settings(&path, &parsed.agents, &defaults.ingest)?;
        let audit_checkpoint_interval = Duration::from_secs(positive(
            "audit.checkpoint_interval_secs",
            parsed.audit.checkpoint_interval_secs,
            900,
        )?);
        let audit_signing_key = (parsed.audit.signing_key_file.clone())
            .unwrap_or_else(|| data_dir.join(crate::audit::checkpoint::KEY_FILE));
        Ok(Self {
            listen,
            metrics_listen,
            tls: parsed.tls.clone(),
            env_tokens: overrides.tokens.clone(),
            database_max_connections: u32::try_from(positive(
                "database_max_connections",
                parsed.database_max_connections.map(u64::from),
                10,
            )?)
            .unwrap_or(10),
            log_format: parsed.log_format.unwrap_or_default(),
            rollup_interval: Duration::from_secs(positive(
                "usage.rollup_interval_secs",
                parsed.usage.rollup_interval_secs,
                60,
            )?),
            audit_checkpoint_interval,
            audit_signing_key,
            job_poll_interval: Duration::from_millis(positive(
                "jobs.poll_interval_ms",
                parsed.jobs.poll_interval_ms,
                1_000,
            )?),
            settings: Settings {
                job_lease: Duration::from_secs(positive(
                    "jobs.lease_secs",
                    parsed.jobs.lease_secs,
                    lease_default,
                )?),
                job_max_attempts: max_attempts,
                job_wait_limit: Duration::from_secs(positive(
                    "jobs.wait_limit_secs",
                    parsed.jobs.wait_limit_secs,
                    defaults.job_wait_limit.as_secs(),
                )?),
                ingest,
                sweep_remove: parsed.sweeper.remove.unwrap_or(defaults.sweep_remove),
                ..lifecycle(&path, (&parsed.agents, &parsed.plain_vms), defaults.clone())?
            },
            local: parsed.local_provider.clone(),
            providers: parsed.providers.clone(),
            hetzner: parsed.hetzner.clone(),
            cloudflare: parsed.cloudflare.clone(),
            fly: parsed.fly.clone(),
            reconcile_interval: Duration::from_secs(positive(
                "reconciler.interval_secs",
                parsed.reconciler.interval_secs,
                60,
            )?),
            reconcile_budget_fraction: fraction(
                &path,
                "reconciler.budget_fraction",
                parsed.reconciler.budget_fraction,
                DEFAULT_RECONCILE_BUDGET_FRACTION,
            )?,
            sweep_interval: Duration::from_secs(positive(
                "sweeper.interval_secs",
                parsed.sweeper.interval_secs,
                3_600,
            )?),
            data_dir,
            database,
        }
        .with_qemu_defaults(parsed.agents.control_url.is_some()))
    }

    /// In qemu mode Agents' VMs see control only through their network's forward, at
    /// [`crate::providers::local::GUEST_CONTROL`], unless `[agents] control_url` says otherwise.
    fn with_qemu_defaults(mut self, control_url_given: bool) -> Self {
        if self.local.vms == LocalVms::Qemu && !control_url_given {
            crate::providers::local::GUEST_CONTROL.clone_into(&mut self.settings.control_url);
        }
        self
    }
}

/// The keys about resources' lives: the `[agents]` ones that are not about heartbeats (an
/// Agent's hostname's domain, what its tunnel routes to, how long a stop waits for its OS) and
/// the `[plain_vms]` defaults.
fn lifecycle(
    path: &Path,
    (section, plain_vms): (&AgentsSection, &PlainVmsSection),
    defaults: Settings,
) -> Result<Settings, ConfigError> {
    let control_url = match &section.control_url {
        Some(url) => control_url(path, url)?,
        None => defaults.control_url.clone(),
    };
    Ok(Settings {
        control_url,
        agent_domain: section
            .domain
            .clone()
            .unwrap_or_else(|| defaults.agent_domain.clone()),
        tunnel_service: section
            .tunnel_service
            .clone()
            .unwrap_or_else(|| defaults.tunnel_service.clone()),
        stop_grace: Duration::from_secs(positive(
            path,
            "agents.stop_grace_secs",
            section.stop_grace_secs,
            defaults.stop_grace.as_secs(),
        )?),
        plain_vms: plain_vm_defaults(path, plain_vms)?,
        ..defaults
    })
}

/// Where Agents reach control: https, or http to this machine only (tests, a laptop).
fn control_url(path: &Path, url: &str) -> Result<String, ConfigError> {
    let local = ["http://127.", "http://localhost", "http://[::1]"];
    if url.starts_with("https://") || local.iter().any(|l| url.starts_with(l)) {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    Err(ConfigError::Invalid {
        path: path.to_owned(),
        key: "agents.control_url",
        message: format!(
            "{url:?} is not an https URL: Agents' VMs send their credentials to it \
             (http is allowed to this machine only)"
        ),
    })
}

/// The file's path (for messages) and its keys; no file is an empty one.
fn parse_file(file: Option<(&Path, &str)>) -> Result<(PathBuf, FileConfig), ConfigError> {
    let Some((path, text)) = file else {
        return Ok((PathBuf::from("(none)"), FileConfig::default()));
    };
    let parsed = toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    Ok((path.to_owned(), parsed))
}

/// Each provider `[providers]` selects has its section.
fn check_providers(path: &Path, parsed: &FileConfig) -> Result<(), ConfigError> {
    if parsed.providers.default == CloudName::Hetzner && parsed.hetzner.is_none() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "providers.default",
            message: "is hetzner, but there is no [hetzner] section (token_file, ...)".to_owned(),
        });
    }
    if parsed.providers.default != CloudName::Local && parsed.agents.control_url.is_none() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "agents.control_url",
            message: "is required when Agents run on a cloud: the https URL their VMs reach \
                      control at"
                .to_owned(),
        });
    }
    if parsed
        .hetzner
        .as_ref()
        .is_some_and(|h| h.requests_per_hour == Some(0))
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "hetzner.requests_per_hour",
            message: "must be greater than 0".to_owned(),
        });
    }
    if parsed.providers.tunnels == TunnelsName::Cloudflare && parsed.cloudflare.is_none() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "providers.tunnels",
            message: "is cloudflare, but there is no [cloudflare] section (token_file, \
                      account_id, zone_id)"
                .to_owned(),
        });
    }
    Ok(())
}

/// Where the API and `/metrics` listen: the flag or environment, else the file, else the
/// defaults.
fn listen_addresses(parsed: &FileConfig, overrides: &Overrides) -> (SocketAddr, SocketAddr) {
    let or_default = |given: Option<SocketAddr>, default: &str, port: u16| {
        given.unwrap_or_else(|| {
            default
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], port)))
        })
    };
    (
        or_default(overrides.listen.or(parsed.listen), DEFAULT_LISTEN, 8080),
        or_default(
            overrides.metrics_listen.or(parsed.metrics_listen),
            DEFAULT_METRICS_LISTEN,
            9180,
        ),
    )
}

/// `[tls]` names two files, and local VMs can reach an HTTPS control. A qemu VM reaches
/// control through a plain forward (`GUEST_CONTROL` is http), so with `[tls]` it needs a
/// replica of its own named in `local_provider.control_urls`.
fn check_tls(path: &Path, parsed: &FileConfig) -> Result<(), ConfigError> {
    let Some(tls) = &parsed.tls else {
        return Ok(());
    };
    for (key, file) in [
        ("tls.cert_file", &tls.cert_file),
        ("tls.key_file", &tls.key_file),
    ] {
        if file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                message: "must name a PEM file".to_owned(),
            });
        }
    }
    if parsed.local_provider.vms == LocalVms::Qemu && parsed.local_provider.control_urls.is_empty()
    {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "local_provider.control_urls",
            message: "is required with [tls] when local_provider.vms is qemu: qemu VMs reach \
                      control over plain HTTP through their network's forward, so name a \
                      plain-HTTP replica for them"
                .to_owned(),
        });
    }
    Ok(())
}

/// A count or duration that must be above zero (`default` when absent).
fn positive(
    path: &Path,
    key: &'static str,
    value: Option<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: "must be greater than 0".to_owned(),
        }),
        other => Ok(other.unwrap_or(default)),
    }
}

/// A share: above 0, at most 1 (`default` when absent).
fn fraction(
    path: &Path,
    key: &'static str,
    value: Option<f64>,
    default: f64,
) -> Result<f64, ConfigError> {
    match value {
        Some(share) if !(share > 0.0 && share <= 1.0) => Err(ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: format!("must be above 0 and at most 1 (a share), not {share}"),
        }),
        other => Ok(other.unwrap_or(default)),
    }
}

/// The `[agents]` section: heartbeats, health and bootstrap tokens.
fn agents_settings(
    path: &Path,
    section: &AgentsSection,
    ingest_defaults: &crate::ingest::IngestSettings,
) -> Result<crate::ingest::IngestSettings, ConfigError> {
    let positive = |key, value, default| positive(path, key, value, default);
    let count = |key: &'static str, value: Option<u32>, default: u32| {
        positive(key, value.map(u64::from), u64::from(default))
            .map(|n| u32::try_from(n).unwrap_or(default))
    };
    Ok(crate::ingest::IngestSettings {
        interval: Duration::from_secs(positive(
            "agents.heartbeat_interval_secs",
            section.heartbeat_interval_secs,
            ingest_defaults.interval.as_secs(),
        )?),
        unhealthy_after: count(
            "agents.unhealthy_after_intervals",
            section.unhealthy_after_intervals,
            ingest_defaults.unhealthy_after,
        )?,
        write_every: count(
            "agents.write_every_heartbeats",
            section.write_every_heartbeats,
            ingest_defaults.write_every,
        )?,
        bootstrap_ttl: Duration::from_secs(positive(
            "agents.bootstrap_ttl_secs",
            section.bootstrap_ttl_secs,
            ingest_defaults.bootstrap_ttl.as_secs(),
        )?),
        replica_timeout: Duration::from_secs(positive(
            "agents.replica_timeout_secs",
            section.replica_timeout_secs,
            ingest_defaults.replica_timeout.as_secs(),
        )?),
        preload_credentials: section
            .preload_credentials
            .unwrap_or(ingest_defaults.preload_credentials),
        agent_backoff_max: Duration::from_secs(positive(
            "agents.agent_backoff_max_secs",
            section.agent_backoff_max_secs,
            ingest_defaults.agent_backoff_max.as_secs(),
        )?),
        ..ingest_defaults.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_put_sqlite_in_the_data_dir() {
        let config = Config::from_text(None, &Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.database, "sqlite://control-data/control.db");
        assert_eq!(config.rollup_interval, Duration::from_mins(1));
    }

    #[test]
    fn environment_and_flags_win_over_the_file() {
        let text = "listen = \"0.0.0.0:9000\"\ndata_dir = \"/srv/control\"\n[usage]\nrollup_interval_secs = 300\n";
        let overrides = Overrides {
            data_dir: Some(PathBuf::from("/var/lib/control")),
            ..Overrides::default()
        };
        let config =
            Config::from_text(Some((Path::new("control.toml"), text)), &overrides).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/control"));
        assert_eq!(config.database, "sqlite:///var/lib/control/control.db");
        assert_eq!(config.rollup_interval, Duration::from_mins(5));
    }

    #[test]
    fn qemu_mode_boots_releases_from_the_images_dir_and_reaches_control_by_its_forward() {
        let read = |text: &str| {
            Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default()).unwrap()
        };
        let config = read("[local_provider]\n");
        assert_eq!(
            config.local.qemu_config(Path::new("/d")).map(|q| q.accel),
            None
        );
        assert_eq!(config.settings.control_url, "http://127.0.0.1:8080");
        let config = read("[local_provider]\nvms = \"qemu\"\nimages_dir = \"/srv/images\"\n");
        let qemu = config.local.qemu_config(Path::new("/d")).unwrap();
        assert_eq!(qemu.images_dir, PathBuf::from("/srv/images"));
        assert_eq!(
            (qemu.memory_mib, qemu.cpus, qemu.accel.as_str()),
            (1024, 1, "tcg")
        );
        assert_eq!(
            config.settings.control_url,
            crate::providers::local::GUEST_CONTROL
        );
        let config = read(
            "[agents]\ncontrol_url = \"http://127.0.0.1:9000\"\n[local_provider]\nvms = \"qemu\"\n",
        );
        assert_eq!(config.settings.control_url, "http://127.0.0.1:9000");
        assert_eq!(
            config
                .local
                .qemu_config(Path::new("/d"))
                .unwrap()
                .images_dir,
            PathBuf::from("/d/images")
        );
    }

    #[test]
    fn providers_default_to_the_local_ones() {
        let config = Config::from_text(None, &Overrides::default()).unwrap();
        assert_eq!(config.providers, ProvidersSection::default());
        let text = "[providers]\ndefault = \"local\"\ntunnels = \"local\"\n";
        let config =
            Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default()).unwrap();
        assert_eq!(config.providers.default, CloudName::Local);

        let text = "[agents]\ncontrol_url = \"https://control.example.com/\"\n\
                    [providers]\ndefault = \"hetzner\"\n\
                    [hetzner]\ntoken_file = \"/etc/control/hcloud\"\n";
        let config =
            Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default()).unwrap();
        assert_eq!(config.providers.default, CloudName::Hetzner);
        assert_eq!(config.settings.control_url, "https://control.example.com");
        assert_eq!(
            config.hetzner.and_then(|h| h.token_file),
            Some(PathBuf::from("/etc/control/hcloud"))
        );

        let text = "[fly]\ntoken_file = \"/etc/control/fly\"\norg_slug = \"legacy\"\n";
        let config =
            Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default()).unwrap();
        let fly = config.fly.expect("the [fly] section");
        assert_eq!(
            (fly.token_file, fly.org_slug.as_str(), fly.base_url),
            (Some(PathBuf::from("/etc/control/fly")), "legacy", None)
        );
        assert_eq!(
            config.providers.default,
            CloudName::Local,
            "new Agents stay put"
        );
    }

    #[test]
    fn the_reconcilers_share_of_the_budget_is_a_fraction() {
        let config = Config::from_text(None, &Overrides::default()).unwrap();
        assert!((config.reconcile_budget_fraction - 0.25).abs() < f64::EPSILON);
        let text = "[reconciler]\nbudget_fraction = 0.1\n[hetzner]\ntoken_file = \"/t\"\nrequests_per_hour = 1800\n";
        let config =
            Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default()).unwrap();
        assert!((config.reconcile_budget_fraction - 0.1).abs() < f64::EPSILON);
        assert_eq!(config.hetzner.unwrap().requests_per_hour, Some(1_800));
        for bad in ["0", "1.5", "-0.2", "nan"] {
            let text = format!("[reconciler]\nbudget_fraction = {bad}\n");
            let error =
                Config::from_text(Some((Path::new("c.toml"), &text)), &Overrides::default())
                    .unwrap_err()
                    .to_string();
            assert!(
                error.contains("reconciler.budget_fraction"),
                "{bad}: {error}"
            );
        }
        let text = "[hetzner]\ntoken_file = \"/t\"\nrequests_per_hour = 0\n";
        let error = Config::from_text(Some((Path::new("c.toml"), text)), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("hetzner.requests_per_hour"), "{error}");
    }

    #[test]
    fn metrics_listen_on_loopback_apart_unless_configured_and_tls_names_two_files() {
        let read = |text: &str, overrides: &Overrides| {
            Config::from_text(Some((Path::new("c.toml"), text)), overrides)
        };
        let config = read("", &Overrides::default()).unwrap();
        assert_eq!(config.metrics_listen.to_string(), DEFAULT_METRICS_LISTEN);
        assert!(config.metrics_listen.ip().is_loopback());
        assert_eq!(config.tls, None);
        let config = read(
            "metrics_listen = \"10.0.0.5:9100\"\n[tls]\ncert_file = \"/etc/control/cert.pem\"\nkey_file = \"/etc/control/key.pem\"\n",
            &Overrides {
                metrics_listen: Some("127.0.0.1:9999".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(
            config.metrics_listen.to_string(),
            "127.0.0.1:9999",
            "the flag wins"
        );
        assert_eq!(
            config.tls,
            Some(TlsSection {
                cert_file: "/etc/control/cert.pem".into(),
                key_file: "/etc/control/key.pem".into(),
            })
        );
        let error = |text: &str| read(text, &Overrides::default()).unwrap_err().to_string();
        let half = error("[tls]\ncert_file = \"/c.pem\"\n");
        assert!(half.contains("key_file"), "{half}");
        let empty = error("[tls]\ncert_file = \"\"\nkey_file = \"/k.pem\"\n");
        assert!(empty.contains("tls.cert_file"), "{empty}");
        let qemu = error(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n[local_provider]\nvms = \"qemu\"\n",
        );
        assert!(qemu.contains("local_provider.control_urls"), "{qemu}");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let path = Path::new("/etc/control.toml");
        let message = |text: &str| {
            Config::from_text(Some((path, text)), &Overrides::default())
                .unwrap_err()
                .to_string()
        };
        let unknown = message("[usage]\nrollup_every = 5\n");
        assert!(
            unknown.contains("/etc/control.toml") && unknown.contains("rollup_every"),
            "{unknown}"
        );
        let cloud = message("[providers]\ndefault = \"fly\"\n");
        assert!(
            cloud.contains("default") && cloud.contains("fly") && cloud.contains("local"),
            "{cloud}"
        );
        let unconfigured = message("[providers]\ndefault = \"hetzner\"\n");
        assert!(
            unconfigured.contains("providers.default") && unconfigured.contains("[hetzner]"),
            "{unconfigured}"
        );
        let no_url = message(
            "[providers]\ndefault = \"hetzner\"\n[hetzner]\ntoken_file = \"/etc/hcloud\"\n",
        );
        assert!(no_url.contains("agents.control_url"), "{no_url}");
        let plain = message("[agents]\ncontrol_url = \"http://control.example.com\"\n");
        assert!(
            plain.contains("agents.control_url") && plain.contains("https"),
            "{plain}"
        );
        let wrong_type = message("listen = 8080\n");
        assert!(wrong_type.contains("listen"), "{wrong_type}");
        let zero = message("[jobs]\npoll_interval_ms = 0\n");
        assert!(
            zero.contains("jobs.poll_interval_ms") && zero.contains("greater than 0"),
            "{zero}"
        );
    }
}
