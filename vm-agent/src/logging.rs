//! Logs: to journald when the agent runs under systemd (structured fields), to stderr
//! otherwise. INFO by default.
//!
//! Every line carries `COMPONENT` (agent, supervisor, cloudflared, slice, heartbeat, status,
//! clone),
//! and under journald `AGENT_ID` and `IMAGE_VERSION` too. The events a support engineer looks
//! for have a stable `MESSAGE_ID` ([`ids`]), so `journalctl MESSAGE_ID=<id>` finds them on any
//! VM and any release. Secrets never reach a log line: tokens are not passed to any logging
//! call, and cloudflared's own output is filtered (see `supervisor`).

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// Stable journald message ids (128-bit, hex) of the events worth searching for.
pub mod ids {
    /// cloudflared has at least one ready edge connection.
    pub const TUNNEL_UP: &str = "3c6b7f0e5a2d4b8c9e1f20a4d6c8b1e7";
    /// cloudflared lost its last ready connection, or exited.
    pub const TUNNEL_DOWN: &str = "8d2e4f6a1b3c4d5e9f0a7b8c6d5e4f31";
    /// The agent (re)starts cloudflared after an exit or a prolonged loss of connections.
    pub const CLOUDFLARED_RESTART: &str = "a41f5e2c7b9d4c03b6e8f1a2d3c4b5e6";
    /// cloudflared restarted too often in the crash-loop window.
    pub const CRASH_LOOP: &str = "f0e1d2c3b4a5468799aabbccddeeff01";
    /// cloudflared exited on a permanent error (usage error or invalid token, exit 255).
    pub const CLOUDFLARED_FAILED: &str = "5b8e2a9c4d1f4e7a8b3c6d9e0f1a2b3c";
    /// `/data/home-coder` is missing, read-only or not the workspace user's.
    pub const SLICE_MISSING: &str = "c7a9e1b3d5f74a2c8e0b6d4f2a1c3e5b";
    /// `/data/home-coder` is healthy again.
    pub const SLICE_BACK: &str = "2e4c6a8b0d1f43e5a7c9b1d3f5e7a9c2";
    /// Heartbeats to control fail.
    pub const CONTROL_UNREACHABLE: &str = "9a1b2c3d4e5f46a7b8c9d0e1f2a3b4c5";
    /// Heartbeats to control succeed again.
    pub const CONTROL_REACHABLE: &str = "6f5e4d3c2b1a40f9e8d7c6b5a4f3e2d1";
    /// `clone-slice` starts copying a source Agent's slice (it says from where).
    pub const CLONE_STARTED: &str = "3eaaab4de549478b8f4f4500a735b838";
    /// `clone-slice` finished: the slice holds the copy, the source volume is no longer used.
    pub const CLONE_DONE: &str = "c955515b78c94176808df436d809d392";
    /// `clone-slice` failed (the line says what and on which path); it is not retried.
    pub const CLONE_FAILED: &str = "e934420fc75a42a1991940aca81dbe3d";
}

/// Logs an event with its component and, optionally, message id.
#[macro_export]
macro_rules! event {
    ($level:expr, $component:literal, id = $id:expr, $($arg:tt)+) => {
        log::log!(target: $component, $level, component = $component, message_id = $id; $($arg)+)
    };
    ($level:expr, $component:literal, $($arg:tt)+) => {
        log::log!(target: $component, $level, component = $component; $($arg)+)
    };
}

/// Installs the journald logger when stderr is connected to the journal, else the stderr one.
pub fn init(level: LevelFilter, agent_id: &str, image_version: &str) {
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
    {
        let journal = journal
            .with_extra_fields([("AGENT_ID", agent_id), ("IMAGE_VERSION", image_version)])
            .with_syslog_identifier("vm-agent".to_owned());
        if journal.install().is_ok() {
            log::set_max_level(level);
            return;
        }
    }
    if log::set_boxed_logger(Box::new(Stderr)).is_ok() {
        log::set_max_level(level);
    }
}

/// One line per record: `2026-11-23T10:00:00.123Z INFO  [component] message key=value …`.
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!(
            "{} {:<5} [{}] {}",
            crate::clock::wall_now(),
            record.level(),
            record.target(),
            record.args()
        );
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        line.push_str(&fields.0);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        if key.as_str() != "component" {
            let _ = write!(self.0, " {key}={value}");
        }
        Ok(())
    }
}

/// A token bucket for noisy sources: `per_minute` lines, refilled continuously, bursts up to
/// the same number. Reports how many lines it dropped once it lets lines through again.
#[derive(Debug)]
pub struct RateLimit {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    refilled: Instant,
    dropped: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it; `dropped_before` lines were suppressed since the last one logged.
    Yes {
        dropped_before: u64,
    },
    No,
}

impl RateLimit {
    pub fn per_minute(lines: u32) -> Self {
        let capacity = f64::from(lines.max(1));
        Self {
            capacity,
            tokens: capacity,
            per_second: capacity / 60.0,
            refilled: Instant::now(),
            dropped: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Yes {
                dropped_before: std::mem::take(&mut self.dropped),
            }
        } else {
            self.dropped += 1;
            Admit::No
        }
    }
}

/// Logs at `level` only if the last such log was at least `every` ago (for repeated failures).
#[derive(Debug, Default)]
pub struct Every {
    last: Option<Instant>,
}

impl Every {
    pub fn due(&mut self, every: Duration, now: Instant) -> bool {
        if self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= every)
        {
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// The level of a line cloudflared printed (`… INF …`, `… ERR …`), for forwarding.
pub fn cloudflared_level(line: &str) -> Level {
    let word = line.split_whitespace().nth(1).unwrap_or_default();
    match word {
        "ERR" | "FTL" | "PNC" => Level::Error,
        "WRN" => Level::Warn,
        "DBG" | "TRC" => Level::Debug,
        _ => Level::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_counts_what_it_drops() {
        let start = Instant::now();
        let mut limit = RateLimit::per_minute(3);
        for _ in 0..3 {
            assert_eq!(limit.admit(start), Admit::Yes { dropped_before: 0 });
        }
        assert_eq!(limit.admit(start), Admit::No);
        assert_eq!(limit.admit(start), Admit::No);
        assert_eq!(
            limit.admit(start + Duration::from_secs(20)),
            Admit::Yes { dropped_before: 2 }
        );
    }

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let all = [
            ids::TUNNEL_UP,
            ids::TUNNEL_DOWN,
            ids::CLOUDFLARED_RESTART,
            ids::CRASH_LOOP,
            ids::CLOUDFLARED_FAILED,
            ids::SLICE_MISSING,
            ids::SLICE_BACK,
            ids::CONTROL_UNREACHABLE,
            ids::CONTROL_REACHABLE,
            ids::CLONE_STARTED,
            ids::CLONE_DONE,
            ids::CLONE_FAILED,
        ];
        for id in all {
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
        }
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn cloudflared_levels_are_read_from_its_lines() {
        assert_eq!(
            cloudflared_level("2026-11-23T10:00:00Z ERR Failed to connect"),
            Level::Error
        );
        assert_eq!(
            cloudflared_level("2026-11-23T10:00:00Z INF Registered tunnel connection"),
            Level::Info
        );
        assert_eq!(cloudflared_level("garbage"), Level::Info);
    }
}
