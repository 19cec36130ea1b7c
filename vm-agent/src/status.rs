//! `vm-agent status`: what is supervised and how it is doing, for a support engineer on the
//! VM. The running agent answers on a Unix socket that only root may open (mode 0600 in a 0700
//! directory); each connection gets one JSON snapshot, which `vm-agent status` renders.

use std::fmt::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use control_api::Timestamp;
use control_api::agent::{SliceState, TunnelState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval};

use crate::clock::wall_now;
use crate::heartbeat::HeartbeatStatus;
use crate::progress::Progress;
use crate::slice::SliceStatus;
use crate::supervisor::TunnelStatus;

/// Everything `vm-agent status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub agent_id: String,
    pub image_version: String,
    pub agent_version: String,
    pub pid: u32,
    pub started_at: Timestamp,
    pub now: Timestamp,
    pub tunnel: TunnelStatus,
    pub slice: SliceStatus,
    pub heartbeat: HeartbeatStatus,
}

/// Where the running agent's state is read from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub agent_id: String,
    pub image_version: String,
    pub started_at: Timestamp,
    pub tunnel: watch::Receiver<TunnelStatus>,
    pub slice: watch::Receiver<SliceStatus>,
    pub heartbeat: watch::Receiver<HeartbeatStatus>,
}

impl Sources {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            agent_id: self.agent_id.clone(),
            image_version: self.image_version.clone(),
            agent_version: crate::heartbeat::AGENT_VERSION.to_owned(),
            pid: std::process::id(),
            started_at: self.started_at,
            now: wall_now(),
            tunnel: self.tunnel.borrow().clone(),
            slice: self.slice.borrow().clone(),
            heartbeat: self.heartbeat.borrow().clone(),
        }
    }
}

/// Creates the socket (its directory 0700, the socket 0600), replacing a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How often the loop comes round while nobody asks, to show the watchdog it is not stuck.
const IDLE: Duration = Duration::from_secs(10);

/// Answers each connection with a snapshot until shutdown, then removes the socket.
pub async fn serve(
    listener: UnixListener,
    sources: Sources,
    path: std::path::PathBuf,
    progress: Progress,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut idle = interval(IDLE);
    idle.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // A snapshot is a few KiB, well within the socket's buffer: the write does not wait
        // for the client to read, so answering fits in the same bound.
        progress.next_within(IDLE);
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = idle.tick() => None,
            _ = shutdown.changed() => break,
        };
        if let Some(Ok((mut stream, _))) = accepted {
            let mut text = serde_json::to_string(&sources.snapshot()).unwrap_or_default();
            text.push('\n');
            let _ = stream.write_all(text.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Reads one snapshot from the socket at `path`.
pub async fn fetch(path: &Path) -> std::io::Result<Snapshot> {
    let mut stream = UnixStream::connect(path).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

fn ago(now: Timestamp, then: Timestamp) -> String {
    duration((now.as_millis() - then.as_millis()).max(0) / 1000) + " ago"
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m {}s", s / 60, s % 60),
        s if s < 172_800 => format!("{}h {}m", s / 3_600, (s % 3_600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = value;
    let mut remainder = 0;
    while scaled >= 1024 && unit < UNITS.len() - 1 {
        remainder = scaled % 1024;
        scaled /= 1024;
        unit += 1;
    }
    format!("{scaled}.{} {}", remainder * 10 / 1024, UNITS[unit])
}

fn tunnel_word(state: TunnelState) -> &'static str {
    match state {
        TunnelState::Starting => "STARTING",
        TunnelState::Ready => "READY",
        TunnelState::Unready => "NO CONNECTIONS",
        TunnelState::Backoff => "BACKING OFF",
        TunnelState::Failed => "FAILED",
        TunnelState::Stopping => "STOPPING",
    }
}

fn slice_word(state: SliceState) -> &'static str {
    match state {
        SliceState::Mounted => "MOUNTED",
        SliceState::Missing => "MISSING",
        SliceState::ReadOnly => "READ-ONLY",
        SliceState::WrongOwner => "WRONG OWNER",
        SliceState::NearlyFull => "NEARLY FULL",
    }
}

/// The snapshot as a support engineer reads it at a glance.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let up = duration((s.now.as_millis() - s.started_at.as_millis()).max(0) / 1000);
    let _ = writeln!(
        out,
        "vm-agent {} (pid {}) · agent {} · image {} · up {up}\n",
        s.agent_version, s.pid, s.agent_id, s.image_version
    );
    let t = &s.tunnel;
    let _ = writeln!(
        out,
        "cloudflared  {}{} · since {} ({})",
        tunnel_word(t.state),
        if t.state == TunnelState::Ready {
            format!(", {} connections", t.ready_connections)
        } else {
            String::new()
        },
        t.since,
        ago(s.now, t.since)
    );
    let mut facts = vec![format!("{} restarts", t.restarts)];
    if let Some(pid) = t.pid {
        facts.insert(0, format!("pid {pid}"));
    }
    if let Some(code) = t.last_exit {
        facts.push(format!("last exit {code}"));
    }
    if t.crash_loop {
        facts.push("CRASH LOOP".to_owned());
    }
    let _ = writeln!(out, "             {} · {}", facts.join(" · "), t.detail);

    let r = &s.slice.report;
    let _ = write!(
        out,
        "slice        {} {}",
        s.slice.path.display(),
        slice_word(r.state)
    );
    if let (Some(free), Some(total)) = (r.free_bytes, r.total_bytes) {
        let _ = write!(out, " · {} free of {}", bytes(free), bytes(total));
    }
    if let Some(inodes) = r.free_inodes {
        let _ = write!(out, " · {inodes} inodes free");
    }
    let _ = writeln!(
        out,
        "\n             {} (checked {})",
        s.slice.detail,
        ago(s.now, s.slice.checked_at)
    );

    let h = &s.heartbeat;
    let last = h
        .last_ok
        .map_or_else(|| "never".to_owned(), |t| ago(s.now, t));
    if h.consecutive_failures == 0 {
        let _ = writeln!(
            out,
            "control      OK · last heartbeat {last} (#{}) · every {}s",
            h.last_sequence, h.interval_s
        );
    } else {
        let _ = writeln!(
            out,
            "control      UNREACHABLE · {} failed attempts · last success {last}\n             {}",
            h.consecutive_failures,
            h.last_error.as_deref().unwrap_or("")
        );
    }
    if !h.registered {
        let _ = writeln!(
            out,
            "             not registered yet (waiting to exchange the bootstrap token)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(50 * 1024 * 1024 * 1024), "50.0 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3 * 3_600 + 12 * 60), "3h 12m");
        assert_eq!(duration(3 * 86_400), "3d 0h");
    }
}
