//! From the merged file to a [`Config`]: each key checked in file order, with its default
//! when absent, and the files it names checked readable, so a bad configuration is refused
//! before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use control_api::agent_config::{AgentToml, CloneFromToml};

use super::{
    CloneFrom, CloneSource, Cloudflared, Config, ConfigError, ControlCa, Heartbeat, Slice, Source,
    TUNNEL_TOKEN_ENV, TunnelToken,
};

fn positive(
    fail: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    value: Option<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match value {
        Some(0) => Err(fail(key, "must be greater than 0".to_owned())),
        other => Ok(other.unwrap_or(default)),
    }
}

fn readable(
    fail: &impl Fn(&str, String) -> ConfigError,
    key: &str,
    path: &Path,
) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(key, format!("cannot read {}: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Err(fail(key, format!("{} is empty", path.display())));
    }
    Ok(text)
}

#[allow(clippy::too_many_lines)] // one check per key, in file order
pub(super) fn validate(
    raw: AgentToml,
    source: &Source,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<Config, ConfigError> {
    for (key, value) in [
        ("agent_id", &raw.agent_id),
        ("image_version", &raw.image_version),
    ] {
        if value.trim().is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
            return Err(fail(
                key,
                "must be 1 to 128 printable characters".to_owned(),
            ));
        }
    }
    let insecure = raw.allow_insecure_control.unwrap_or(false);
    let url = reqwest::Url::parse(&raw.control_url)
        .map_err(|e| fail("control_url", format!("is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(fail(
                "control_url",
                "must be https:// (plain http is allowed only with allow_insecure_control = true, for tests; \
                 a private CA is trusted with control_ca_file)".to_owned(),
            ));
        }
        other => {
            return Err(fail(
                "control_url",
                format!("has unsupported scheme `{other}`"),
            ));
        }
    }
    if url.host_str().is_none() {
        return Err(fail("control_url", "has no host".to_owned()));
    }
    let control_ca = raw
        .control_ca_file
        .map(|file| control_ca(fail, file))
        .transpose()?;

    let credential_file = raw
        .credential_file
        .unwrap_or_else(|| PathBuf::from("/var/lib/vm-agent/credential"));
    let bootstrap_token_file = raw
        .bootstrap_token_file
        .unwrap_or_else(|| PathBuf::from("/etc/vm-agent/bootstrap-token"));
    if !credential_file.exists() {
        // No credential yet: the bootstrap token is needed to get one.
        readable(fail, "bootstrap_token_file", &bootstrap_token_file)?;
    }

    let c = raw.cloudflared;
    let binary = c
        .binary
        .unwrap_or_else(|| PathBuf::from("/usr/bin/cloudflared"));
    if !binary.is_file() {
        return Err(fail(
            "cloudflared.binary",
            format!("{} is not a file", binary.display()),
        ));
    }
    let token = match (c.token_file, source.env.get(TUNNEL_TOKEN_ENV)) {
        (Some(path), _) => {
            readable(fail, "cloudflared.token_file", &path)?;
            TunnelToken::File(path)
        }
        (None, Some(token)) if !token.trim().is_empty() => TunnelToken::Environment(token.clone()),
        (None, _) => {
            let path = PathBuf::from("/etc/vm-agent/tunnel-token");
            readable(fail, "cloudflared.token_file", &path).map_err(|e| ConfigError {
                message: format!("{} (or set {TUNNEL_TOKEN_ENV})", e.message),
                ..e
            })?;
            TunnelToken::File(path)
        }
    };
    let metrics: SocketAddr = c
        .metrics
        .as_deref()
        .unwrap_or("127.0.0.1:20241")
        .parse()
        .map_err(|e| {
            fail(
                "cloudflared.metrics",
                format!("is not an address such as 127.0.0.1:20241: {e}"),
            )
        })?;
    if !metrics.ip().is_loopback() {
        return Err(fail(
            "cloudflared.metrics",
            "must be a loopback address: the VM has no inbound ports".to_owned(),
        ));
    }
    if let Some(bad) = c
        .extra_args
        .iter()
        .find(|a| a.starts_with("--token") || a.starts_with("--metrics"))
    {
        return Err(fail(
            "cloudflared.extra_args",
            format!(
                "must not contain `{bad}`: the agent passes the token and metrics address itself"
            ),
        ));
    }
    let backoff_initial = positive(
        fail,
        "cloudflared.backoff_initial_ms",
        c.backoff_initial_ms,
        1_000,
    )?;
    let backoff_max = positive(fail, "cloudflared.backoff_max_ms", c.backoff_max_ms, 60_000)?;
    if backoff_max < backoff_initial {
        return Err(fail(
            "cloudflared.backoff_max_ms",
            "must not be below backoff_initial_ms".to_owned(),
        ));
    }
    let crash_loop_restarts = c.crash_loop_restarts.unwrap_or(5);
    if crash_loop_restarts == 0 {
        return Err(fail(
            "cloudflared.crash_loop_restarts",
            "must be greater than 0".to_owned(),
        ));
    }
    let log_lines_per_minute = c.log_lines_per_minute.unwrap_or(120);
    let cloudflared = Cloudflared {
        binary,
        token,
        metrics,
        extra_args: c.extra_args,
        ready_poll: Duration::from_millis(positive(
            fail,
            "cloudflared.ready_poll_ms",
            c.ready_poll_ms,
            2_000,
        )?),
        unready_restart_after: Duration::from_secs(positive(
            fail,
            "cloudflared.unready_restart_after_s",
            c.unready_restart_after_s,
            120,
        )?),
        stop_grace: Duration::from_secs(positive(
            fail,
            "cloudflared.stop_grace_s",
            c.stop_grace_s,
            35,
        )?),
        backoff_initial: Duration::from_millis(backoff_initial),
        backoff_max: Duration::from_millis(backoff_max),
        stable_after: Duration::from_secs(positive(
            fail,
            "cloudflared.stable_after_s",
            c.stable_after_s,
            120,
        )?),
        crash_loop_restarts,
        crash_loop_window: Duration::from_secs(positive(
            fail,
            "cloudflared.crash_loop_window_s",
            c.crash_loop_window_s,
            600,
        )?),
        failed_retry: Duration::from_secs(positive(
            fail,
            "cloudflared.failed_retry_s",
            c.failed_retry_s,
            300,
        )?),
        log_lines_per_minute,
    };

    let s = raw.slice;
    let path = s.path.unwrap_or_else(|| PathBuf::from("/data/home-coder"));
    if !path.is_absolute() {
        return Err(fail("slice.path", "must be an absolute path".to_owned()));
    }
    let owner = s.owner.unwrap_or_else(|| "coder".to_owned());
    let owner_uid = nix::unistd::User::from_name(&owner)
        .ok()
        .flatten()
        .map(|user| user.uid.as_raw())
        .ok_or_else(|| fail("slice.owner", format!("no user `{owner}` on this system")))?;
    let nearly_full_percent = s.nearly_full_percent.unwrap_or(95);
    if !(1..=100).contains(&nearly_full_percent) {
        return Err(fail(
            "slice.nearly_full_percent",
            "must be from 1 to 100".to_owned(),
        ));
    }
    let slice = Slice {
        path,
        owner,
        owner_uid,
        mountinfo: s
            .mountinfo
            .unwrap_or_else(|| PathBuf::from("/proc/self/mountinfo")),
        check_interval: Duration::from_secs(positive(
            fail,
            "slice.check_interval_s",
            s.check_interval_s,
            30,
        )?),
        nearly_full_percent,
    };

    let h = raw.heartbeat;
    let heartbeat = Heartbeat {
        interval: Duration::from_secs(positive(fail, "heartbeat.interval_s", h.interval_s, 30)?),
        timeout: Duration::from_secs(positive(fail, "heartbeat.timeout_s", h.timeout_s, 10)?),
        backoff_max: Duration::from_secs(positive(
            fail,
            "heartbeat.backoff_max_s",
            h.backoff_max_s,
            300,
        )?),
    };
    let log_level = match raw.log_level.as_deref().unwrap_or("info") {
        level @ ("error" | "warn" | "info" | "debug" | "trace") => {
            log::LevelFilter::from_str(level).unwrap_or(log::LevelFilter::Info)
        }
        other => {
            return Err(fail(
                "log_level",
                format!("`{other}` is not one of error, warn, info, debug, trace"),
            ));
        }
    };
    Ok(Config {
        agent_id: raw.agent_id,
        image_version: raw.image_version,
        control_url: raw.control_url.trim_end_matches('/').to_owned(),
        control_ca,
        bootstrap_token_file,
        credential_file,
        status_socket: raw
            .status_socket
            .unwrap_or_else(|| PathBuf::from("/run/vm-agent/status.sock")),
        log_level,
        cloudflared,
        slice,
        heartbeat,
        clone_from: raw.clone_from.map(|c| clone_from(c, fail)).transpose()?,
    })
}

/// `control_ca_file`: a PEM file of one or more CA certificates, each one rustls takes as a
/// trust anchor, so a file that would make every heartbeat fail is refused at load.
fn control_ca(
    fail: &impl Fn(&str, String) -> ConfigError,
    file: PathBuf,
) -> Result<ControlCa, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let key = "control_ca_file";
    if !file.is_absolute() {
        return Err(fail(
            key,
            format!("must be an absolute path, not `{}`", file.display()),
        ));
    }
    let text = std::fs::read(&file)
        .map_err(|e| fail(key, format!("cannot read {}: {e}", file.display())))?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(key, format!("{} is not PEM: {e}", file.display())))?;
    if certificates.is_empty() {
        return Err(fail(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                file.display()
            ),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in certificates.iter().enumerate() {
        roots.add(certificate.clone()).map_err(|e| {
            fail(
                key,
                format!(
                    "certificate {} of {} is not a usable CA certificate: {e}",
                    n + 1,
                    file.display()
                ),
            )
        })?;
    }
    Ok(ControlCa {
        file,
        certificates: certificates
            .into_iter()
            .map(|der| der.as_ref().to_vec())
            .collect(),
    })
}

/// `[clone_from]`: the source Agent, and exactly one of its volume's device or a directory
/// where that volume is mounted, as an absolute path. The paths need not exist yet: the
/// source's volume is attached to a clone only after it has booted.
fn clone_from(
    raw: CloneFromToml,
    fail: &impl Fn(&str, String) -> ConfigError,
) -> Result<CloneFrom, ConfigError> {
    let agent = raw.source_agent.trim();
    if agent.is_empty() || agent.len() > 128 || agent.chars().any(char::is_control) {
        return Err(fail(
            "clone_from.source_agent",
            "must name the source Agent (1 to 128 printable characters)".to_owned(),
        ));
    }
    let source = match (raw.device, raw.directory) {
        (Some(device), None) => CloneSource::Device(device),
        (None, Some(directory)) => CloneSource::Directory(directory),
        (Some(_), Some(_)) => {
            return Err(fail(
                "clone_from",
                "sets both `device` and `directory`: give exactly one (the source volume's device, or the directory where it is mounted)".to_owned(),
            ));
        }
        (None, None) => {
            return Err(fail(
                "clone_from",
                "sets neither `device` nor `directory`: give exactly one (the source volume's device, or the directory where it is mounted)".to_owned(),
            ));
        }
    };
    let (key, path) = match &source {
        CloneSource::Device(path) => ("clone_from.device", path),
        CloneSource::Directory(path) => ("clone_from.directory", path),
    };
    if !path.is_absolute() {
        return Err(fail(
            key,
            format!("must be an absolute path, not `{}`", path.display()),
        ));
    }
    Ok(CloneFrom {
        source_agent: agent.to_owned(),
        source,
    })
}
