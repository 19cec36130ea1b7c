//! The fake organization's apps, machines and volumes, and how a machine's state moves on:
//! each transient state (`starting`, `stopping`, `suspending`, `destroying`) becomes its
//! persistent one after the fake's transition delay, looked at whenever the state is read.
//! A destroyed machine stays readable (state `destroyed`) but leaves the listings, as at Fly;
//! its volume is released once it is destroyed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};
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

    pub(crate) fn wall(&self, at: Instant) -> OffsetDateTime {
        let wall = self.base_wall + at.saturating_duration_since(self.base_instant);
        wall.replace_nanosecond(0).unwrap_or(wall)
    }
}

/// Fly writes RFC 3339 in UTC with whole seconds (`2024-05-20T17:07:36Z`).
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Unix milliseconds, as a machine event's `timestamp`.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
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

/// A machine's states. Persistent: created, started, stopped, suspended, failed; transient:
/// starting, stopping, suspending, destroying; and destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Failed,
    Destroying,
    Destroyed,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspending => "suspending",
            MachineState::Suspended => "suspended",
            MachineState::Failed => "failed",
            MachineState::Destroying => "destroying",
            MachineState::Destroyed => "destroyed",
        }
    }

    pub fn parse(text: &str) -> Option<MachineState> {
        Some(match text {
            "created" => MachineState::Created,
            "starting" => MachineState::Starting,
            "started" => MachineState::Started,
            "stopping" => MachineState::Stopping,
            "stopped" => MachineState::Stopped,
            "suspending" => MachineState::Suspending,
            "suspended" => MachineState::Suspended,
            "failed" => MachineState::Failed,
            "destroying" => MachineState::Destroying,
            "destroyed" => MachineState::Destroyed,
            _ => return None,
        })
    }

    /// The persistent state a transient one ends in.
    fn settles_to(self) -> Option<MachineState> {
        match self {
            MachineState::Starting => Some(MachineState::Started),
            MachineState::Stopping => Some(MachineState::Stopped),
            MachineState::Suspending => Some(MachineState::Suspended),
            MachineState::Destroying => Some(MachineState::Destroyed),
            _ => None,
        }
    }
}

pub(crate) struct App {
    pub id: String,
    pub name: String,
    pub network: String,
    pub created: OffsetDateTime,
}

/// One entry of a machine's `events`.
pub(crate) struct Event {
    pub kind: &'static str,
    pub status: &'static str,
    pub source: &'static str,
    pub at: OffsetDateTime,
}

pub(crate) struct Machine {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    /// The config as given (image, env, guest, mounts, restart, metadata, …).
    pub config: Map<String, Value>,
    pub state: MachineState,
    /// When the transient state turns into its persistent one.
    pub settles_at: Option<Instant>,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    pub events: Vec<Event>,
    /// The last stop's signal (`SIGTERM`, `SIGKILL`, …), for tests.
    pub last_signal: Option<String>,
}

impl Machine {
    pub(crate) fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        let slot = self
            .config
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        match slot {
            Value::Object(map) => map,
            _ => unreachable!("made an object just above"),
        }
    }

    pub(crate) fn metadata(&self) -> BTreeMap<String, String> {
        self.config
            .get("metadata")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The volumes its config mounts.
    pub(crate) fn mounted_volumes(&self) -> Vec<String> {
        self.config
            .get("mounts")
            .and_then(Value::as_array)
            .map(|mounts| {
                mounts
                    .iter()
                    .filter_map(|m| m.get("volume").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn image(&self) -> &str {
        self.config
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

pub(crate) struct Volume {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub size_gb: u64,
    pub encrypted: bool,
    pub attached_machine: Option<String>,
    pub created: OffsetDateTime,
    pub destroyed: bool,
}

pub(crate) struct State {
    pub clock: Clock,
    counter: u64,
    pub delay: Duration,
    /// Apps by name.
    pub apps: BTreeMap<String, App>,
    /// Machines in creation order.
    pub machines: BTreeMap<u64, Machine>,
    /// Volumes in creation order.
    pub volumes: BTreeMap<u64, Volume>,
}

impl State {
    pub(crate) fn new(delay: Duration) -> State {
        State {
            clock: Clock::new(),
            counter: 0,
            delay,
            apps: BTreeMap::new(),
            machines: BTreeMap::new(),
            volumes: BTreeMap::new(),
        }
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A machine id: 14 hex digits, as Fly's.
    pub(crate) fn machine_id(&mut self) -> String {
        let b: [u8; 7] = random(self.next_seq());
        hex(&b)
    }

    /// `vol_` and 16 lowercase letters and digits.
    pub(crate) fn volume_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let b: [u8; 16] = random(self.next_seq());
        let tail: String = b
            .iter()
            .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
            .collect();
        format!("vol_{tail}")
    }

    /// A ULID-looking instance id (26 characters of Crockford base32).
    pub(crate) fn instance_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let b: [u8; 26] = random(self.next_seq());
        b.iter()
            .map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()]))
            .collect()
    }

    pub(crate) fn private_ip(&mut self) -> String {
        let b: [u8; 4] = random(self.next_seq());
        format!(
            "fdaa:0:3ec2:a7b:{:x}:{:x}:{:x}:2",
            b[0],
            u16::from(b[1]) << 8 | u16::from(b[2]),
            b[3]
        )
    }

    /// Moves every machine whose transient state is due into its persistent one.
    pub(crate) fn settle(&mut self, now: Instant) {
        let at = self.clock.wall(now);
        let mut released = Vec::new();
        for m in self.machines.values_mut() {
            let Some(due) = m.settles_at else { continue };
            if due > now {
                continue;
            }
            m.settles_at = None;
            if let Some(to) = m.state.settles_to() {
                m.state = to;
                m.updated = at;
                m.events.insert(
                    0,
                    Event {
                        kind: match to {
                            MachineState::Started => "start",
                            MachineState::Stopped => "exit",
                            MachineState::Suspended => "suspend",
                            _ => "destroy",
                        },
                        status: to.as_str(),
                        source: "flyd",
                        at,
                    },
                );
                if to == MachineState::Destroyed {
                    released.push(m.id.clone());
                }
            }
        }
        for v in self.volumes.values_mut() {
            if v.attached_machine
                .as_ref()
                .is_some_and(|m| released.contains(m))
            {
                v.attached_machine = None;
            }
        }
    }

    /// Puts `m` into the transient state `to`, settling after the delay (at once with none).
    pub(crate) fn begin(
        m: &mut Machine,
        to: MachineState,
        delay: Duration,
        now: Instant,
        at: OffsetDateTime,
        kind: &'static str,
    ) {
        m.state = to;
        m.updated = at;
        m.settles_at = Some(now + delay);
        m.events.insert(
            0,
            Event {
                kind,
                status: to.as_str(),
                source: "user",
                at,
            },
        );
    }

    pub(crate) fn machine(&self, app: &str, id: &str) -> Option<&Machine> {
        self.machines.values().find(|m| m.app == app && m.id == id)
    }

    pub(crate) fn machine_mut(&mut self, app: &str, id: &str) -> Option<&mut Machine> {
        self.machines
            .values_mut()
            .find(|m| m.app == app && m.id == id)
    }

    pub(crate) fn volume(&self, app: &str, id: &str) -> Option<&Volume> {
        self.volumes
            .values()
            .find(|v| v.app == app && v.id == id && !v.destroyed)
    }

    pub(crate) fn volume_mut(&mut self, app: &str, id: &str) -> Option<&mut Volume> {
        self.volumes
            .values_mut()
            .find(|v| v.app == app && v.id == id && !v.destroyed)
    }

    pub(crate) fn new_app(&mut self, name: &str, network: &str, now: Instant) {
        let id: [u8; 8] = random(self.next_seq());
        let created = self.clock.wall(now);
        self.apps.insert(
            name.to_owned(),
            App {
                id: hex(&id),
                name: name.to_owned(),
                network: network.to_owned(),
                created,
            },
        );
    }

    pub(crate) fn new_volume(
        &mut self,
        app: &str,
        name: &str,
        region: &str,
        size_gb: u64,
        encrypted: bool,
        now: Instant,
    ) -> String {
        let seq = self.next_seq();
        let id = self.volume_id();
        let created = self.clock.wall(now);
        self.volumes.insert(
            seq,
            Volume {
                id: id.clone(),
                app: app.to_owned(),
                name: name.to_owned(),
                region: region.to_owned(),
                size_gb,
                encrypted,
                attached_machine: None,
                created,
                destroyed: false,
            },
        );
        id
    }

    /// Makes a machine in `state` (a transient state settles after the delay).
    pub(crate) fn new_machine(
        &mut self,
        app: &str,
        name: Option<String>,
        region: &str,
        config: Map<String, Value>,
        state: MachineState,
        now: Instant,
    ) -> String {
        let seq = self.next_seq();
        let id = self.machine_id();
        let instance_id = self.instance_id();
        let private_ip = self.private_ip();
        let at = self.clock.wall(now);
        let mut machine = Machine {
            name: name.unwrap_or_else(|| format!("machine-{}", &id[..6])),
            id: id.clone(),
            app: app.to_owned(),
            region: region.to_owned(),
            instance_id,
            private_ip,
            config,
            state: MachineState::Created,
            settles_at: None,
            created: at,
            updated: at,
            events: vec![Event {
                kind: "launch",
                status: "created",
                source: "user",
                at,
            }],
            last_signal: None,
        };
        if state.settles_to().is_some() {
            let delay = self.delay;
            State::begin(&mut machine, state, delay, now, at, "start");
        } else {
            machine.state = state;
        }
        for vol in machine.mounted_volumes() {
            if let Some(v) = self.volume_mut(app, &vol) {
                v.attached_machine = Some(id.clone());
            }
        }
        self.machines.insert(seq, machine);
        id
    }
}
