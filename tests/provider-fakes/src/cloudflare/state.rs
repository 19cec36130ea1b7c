//! The fake account's tunnels and the fake zone's DNS records. Deleting a tunnel is soft, as at
//! Cloudflare: it stays, with `deleted_at` set, and its name is free again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;

/// Wall-clock timestamps derived from the monotonic clock, read once.
pub(crate) struct Clock {
    base_instant: Instant,
    base_wall: OffsetDateTime,
}

impl Clock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the fake stands for a remote API: its timestamps are the real time, read once"
    )]
    fn new() -> Clock {
        Clock {
            base_instant: Instant::now(),
            base_wall: OffsetDateTime::now_utc(),
        }
    }

    /// Microseconds, as Cloudflare writes them (`2025-02-18T22:41:43.534395Z`).
    pub(crate) fn wall(&self, at: Instant) -> OffsetDateTime {
        let wall = self.base_wall + at.saturating_duration_since(self.base_instant);
        let micros = wall.microsecond();
        wall.replace_microsecond(micros).unwrap_or(wall)
    }
}

pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Random bytes; a counter-derived fallback keeps ids unique should the OS refuse.
fn random<const N: usize>(counter: u64) -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = counter.to_le_bytes()[i % 8] ^ u8::try_from(i % 256).unwrap_or(0);
        }
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` is a UUID in its 8-4-4-4-12 form.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// One edge connection of a connector.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub id: String,
    pub colo_name: &'static str,
    pub opened_at: OffsetDateTime,
}

/// A cloudflared process connected to a tunnel (a "client" in Cloudflare's words).
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub id: String,
    pub run_at: OffsetDateTime,
    pub conns: Vec<Conn>,
}

pub(crate) struct Tunnel {
    pub id: String,
    pub name: String,
    pub created: OffsetDateTime,
    pub deleted: Option<OffsetDateTime>,
    pub config_src: String,
    pub secret: [u8; 32],
    pub connectors: Vec<Connector>,
    pub conns_active_at: Option<OffsetDateTime>,
    pub conns_inactive_at: Option<OffsetDateTime>,
    /// The remote configuration (`config` as PUT) and its version; `None` until one is put.
    pub config: Option<Value>,
    pub config_version: u64,
    pub config_created: Option<OffsetDateTime>,
}

impl Tunnel {
    pub(crate) fn live_connections(&self) -> usize {
        self.connectors.iter().map(|c| c.conns.len()).sum()
    }

    /// inactive (never connected), healthy (four connections), degraded (fewer), down (had
    /// connections, has none now).
    pub(crate) fn status(&self) -> &'static str {
        match self.live_connections() {
            0 if self.conns_active_at.is_none() => "inactive",
            0 => "down",
            n if n >= 4 => "healthy",
            _ => "degraded",
        }
    }
}

pub(crate) struct DnsRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub content: String,
    pub proxied: bool,
    pub ttl: u64,
    pub comment: Option<String>,
    pub tags: Vec<String>,
    pub created: OffsetDateTime,
}

pub(crate) struct State {
    pub clock: Clock,
    counter: u64,
    /// Tunnels in creation order (the key is the creation sequence).
    pub tunnels: BTreeMap<u64, Tunnel>,
    pub records: BTreeMap<u64, DnsRecord>,
}

const COLOS: &[&str] = &["fra08", "ams01", "cdg01", "lhr01"];

impl State {
    pub(crate) fn new() -> State {
        State {
            clock: Clock::new(),
            counter: 0,
            tunnels: BTreeMap::new(),
            records: BTreeMap::new(),
        }
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A random (version 4) UUID.
    pub(crate) fn uuid(&mut self) -> String {
        let mut b: [u8; 16] = random(self.next_seq());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex(&b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// A 32-hex-digit identifier, as Cloudflare's record ids.
    pub(crate) fn tag(&mut self) -> String {
        let b: [u8; 16] = random(self.next_seq());
        hex(&b)
    }

    pub(crate) fn secret(&mut self) -> [u8; 32] {
        random(self.next_seq())
    }

    pub(crate) fn tunnel(&self, id: &str) -> Option<&Tunnel> {
        self.tunnels
            .values()
            .find(|t| t.id.eq_ignore_ascii_case(id))
    }

    pub(crate) fn tunnel_mut(&mut self, id: &str) -> Option<&mut Tunnel> {
        self.tunnels
            .values_mut()
            .find(|t| t.id.eq_ignore_ascii_case(id))
    }

    /// A cloudflared connects `conns` edge connections to a live tunnel; returns its client id.
    pub(crate) fn connect(&mut self, tunnel: &str, conns: usize, now: Instant) -> Option<String> {
        let at = self.clock.wall(now);
        let client = self.uuid();
        let ids: Vec<String> = (0..conns).map(|_| self.uuid()).collect();
        let t = self.tunnel_mut(tunnel).filter(|t| t.deleted.is_none())?;
        t.connectors.push(Connector {
            id: client.clone(),
            run_at: at,
            conns: ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| Conn {
                    id,
                    colo_name: COLOS[i % COLOS.len()],
                    opened_at: at,
                })
                .collect(),
        });
        if conns > 0 {
            t.conns_active_at = Some(at);
        }
        Some(client)
    }

    /// Drops the connectors (all, or the one `client`); returns how many went.
    pub(crate) fn disconnect(&mut self, tunnel: &str, client: Option<&str>, now: Instant) -> usize {
        let at = self.clock.wall(now);
        let Some(t) = self.tunnel_mut(tunnel) else {
            return 0;
        };
        let before = t.connectors.len();
        t.connectors
            .retain(|c| client.is_some_and(|id| !c.id.eq_ignore_ascii_case(id)));
        let gone = before - t.connectors.len();
        if gone > 0 && t.live_connections() == 0 {
            t.conns_inactive_at = Some(at);
        }
        gone
    }
}
