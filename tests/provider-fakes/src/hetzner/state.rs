//! The fake project's resources and the actions working on them. Actions progress with time:
//! nothing runs in the background, instead every request first calls [`State::advance`], which
//! finishes the actions whose time has come and applies what they do (a server comes up, goes off,
//! disappears). This keeps the fake deterministic and free of timers; it must never apply an
//! action's effect before the action reports `success`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::catalog::{self, Image, Location, ServerType};
use super::labels::Labels;

/// Wall-clock timestamps derived from the monotonic clock, so that `started` and `finished` agree
/// with the delays the fake measures.
pub(crate) struct Clock {
    base_instant: Instant,
    base_wall: OffsetDateTime,
}

impl Clock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the fake stands for a remote API: its timestamps are the real time, read once"
    )]
    pub(crate) fn new() -> Clock {
        Clock {
            base_instant: Instant::now(),
            base_wall: OffsetDateTime::now_utc(),
        }
    }

    /// When the fake started: the creation time of its catalogue images.
    pub(crate) fn epoch(&self) -> OffsetDateTime {
        self.base_wall
            .replace_nanosecond(0)
            .unwrap_or(self.base_wall)
    }

    pub(crate) fn wall(&self, at: Instant) -> OffsetDateTime {
        let wall = self.base_wall + at.saturating_duration_since(self.base_instant);
        wall.replace_nanosecond(0).unwrap_or(wall)
    }
}

pub(crate) struct Server {
    pub id: u64,
    pub name: String,
    pub labels: Labels,
    pub status: &'static str,
    #[expect(
        clippy::struct_field_names,
        reason = "the name of the key in Hetzner's JSON"
    )]
    pub server_type: &'static ServerType,
    pub location: &'static Location,
    pub image: Image,
    pub created: OffsetDateTime,
    pub firewalls: Vec<u64>,
    pub volumes: Vec<u64>,
    pub user_data: Option<String>,
    pub ipv4: bool,
    pub ipv6: bool,
    /// What the create request said of `public_net` (for tests of what a client sends).
    pub public_net_requested: Option<(Option<bool>, Option<bool>)>,
    /// When a guest that accepted an ACPI shutdown has finished powering off.
    pub off_at: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub description: Option<String>,
    pub direction: String,
    pub protocol: String,
    pub port: Option<String>,
    pub source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
}

pub(crate) struct Firewall {
    pub id: u64,
    pub name: String,
    pub labels: Labels,
    pub rules: Vec<Rule>,
    pub servers: Vec<u64>,
    pub created: OffsetDateTime,
}

pub(crate) struct Volume {
    pub id: u64,
    pub name: String,
    pub labels: Labels,
    pub size: u64,
    pub location: &'static Location,
    pub server: Option<u64>,
    pub format: Option<String>,
    pub created: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActionStatus {
    Running,
    Success,
    Error,
}

/// What an action does to the world when it finishes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Effect {
    None,
    /// The server's status on success and on error.
    ServerStatus {
        server: u64,
        success: &'static str,
        failure: &'static str,
    },
    /// ACPI shutdown: the guest powers off a little later, unless it ignores the signal.
    Shutdown {
        server: u64,
    },
    DeleteServer {
        server: u64,
    },
}

pub(crate) struct Action {
    pub id: u64,
    pub command: &'static str,
    pub resources: Vec<(u64, &'static str)>,
    pub started_at: Instant,
    pub duration: Duration,
    pub started: OffsetDateTime,
    pub status: ActionStatus,
    pub progress: u8,
    pub finished: Option<OffsetDateTime>,
    pub error: Option<(String, String)>,
    pub effect: Effect,
    /// Ends in error with this code and message instead of success.
    pub fail: Option<(String, String)>,
    /// An action that must succeed first (`start_server` waits for `create_server`).
    pub after: Option<u64>,
}

pub(crate) struct State {
    pub clock: Clock,
    next_id: u64,
    pub servers: BTreeMap<u64, Server>,
    pub firewalls: BTreeMap<u64, Firewall>,
    pub volumes: BTreeMap<u64, Volume>,
    pub actions: BTreeMap<u64, Action>,
    /// The ids of the actions still running, so each call looks at those only.
    running: BTreeSet<u64>,
    pub images: Vec<Image>,
    pub action_delay: Duration,
    pub ignore_shutdown: bool,
    /// Commands whose next action ends in error: (command, code, message).
    pub action_failures: Vec<(String, String, String)>,
}

impl State {
    pub(crate) fn new(action_delay: Duration) -> State {
        State {
            clock: Clock::new(),
            next_id: 100_000,
            servers: BTreeMap::new(),
            firewalls: BTreeMap::new(),
            volumes: BTreeMap::new(),
            actions: BTreeMap::new(),
            running: BTreeSet::new(),
            images: catalog::system_images(),
            action_delay,
            ignore_shutdown: false,
            action_failures: Vec::new(),
        }
    }

    /// Ids are unique across resource kinds, so a client that mixes them up gets a 404.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Starts an action now; it lasts `steps` action delays.
    pub(crate) fn start_action(
        &mut self,
        now: Instant,
        command: &'static str,
        resources: Vec<(u64, &'static str)>,
        effect: Effect,
        steps: u32,
        after: Option<u64>,
    ) -> u64 {
        let id = self.next_id();
        let fail = self
            .action_failures
            .iter()
            .position(|(c, _, _)| c == command)
            .map(|i| self.action_failures.remove(i))
            .map(|(_, code, message)| (code, message));
        let action = Action {
            id,
            command,
            resources,
            started_at: now,
            duration: self.action_delay * steps,
            started: self.clock.wall(now),
            status: ActionStatus::Running,
            progress: 0,
            finished: None,
            error: None,
            effect,
            fail,
            after,
        };
        self.actions.insert(id, action);
        self.running.insert(id);
        id
    }

    fn running(&self) -> impl Iterator<Item = &Action> {
        self.running.iter().filter_map(|id| self.actions.get(id))
    }

    pub(crate) fn server_busy(&self, server: u64) -> bool {
        self.running()
            .any(|a| a.resources.contains(&(server, "server")))
    }

    pub(crate) fn volume_busy(&self, volume: u64) -> bool {
        self.running()
            .any(|a| a.resources.contains(&(volume, "volume")))
    }

    /// Finishes every action due by `now`, in the order they end, and applies their effects.
    pub(crate) fn advance(&mut self, now: Instant) {
        let mut due: Vec<(Instant, u64)> = self
            .running()
            .map(|a| (a.started_at + a.duration, a.id))
            .filter(|(end, _)| *end <= now)
            .collect();
        due.sort();
        for (end, id) in due {
            self.finish(id, end);
        }
        for id in &self.running {
            let Some(action) = self.actions.get_mut(id) else {
                continue;
            };
            let elapsed = now.saturating_duration_since(action.started_at).as_millis();
            let total = action.duration.as_millis().max(1);
            action.progress = u8::try_from((elapsed * 100 / total).min(99)).unwrap_or(99);
        }
        for server in self.servers.values_mut() {
            if server.off_at.is_some_and(|at| at <= now) {
                server.off_at = None;
                if server.status == "running" {
                    server.status = "off";
                }
            }
        }
    }

    fn finish(&mut self, id: u64, end: Instant) {
        let prerequisite_failed = self
            .actions
            .get(&id)
            .and_then(|a| a.after)
            .and_then(|after| self.actions.get(&after))
            .is_some_and(|a| a.status == ActionStatus::Error);
        let finished = self.clock.wall(end);
        self.running.remove(&id);
        let Some(action) = self.actions.get_mut(&id) else {
            return;
        };
        if prerequisite_failed && action.fail.is_none() {
            action.fail = Some((
                "action_failed".to_owned(),
                "a prerequisite action failed".to_owned(),
            ));
        }
        action.finished = Some(finished);
        let ok = action.fail.is_none();
        if let Some(fail) = action.fail.take() {
            action.status = ActionStatus::Error;
            action.error = Some(fail);
        } else {
            action.status = ActionStatus::Success;
            action.progress = 100;
        }
        let effect = action.effect;
        let delay = self.action_delay;
        match effect {
            Effect::None => {}
            Effect::ServerStatus {
                server,
                success,
                failure,
            } => {
                if let Some(s) = self
                    .servers
                    .get_mut(&server)
                    .filter(|s| s.status != "deleting")
                {
                    s.status = if ok { success } else { failure };
                }
            }
            Effect::Shutdown { server } => {
                if ok
                    && !self.ignore_shutdown
                    && let Some(s) = self.servers.get_mut(&server)
                {
                    s.off_at = Some(end + delay);
                }
            }
            Effect::DeleteServer { server } => {
                if ok {
                    self.servers.remove(&server);
                    for firewall in self.firewalls.values_mut() {
                        firewall.servers.retain(|s| *s != server);
                    }
                    for volume in self.volumes.values_mut() {
                        if volume.server == Some(server) {
                            volume.server = None;
                        }
                    }
                } else if let Some(s) = self.servers.get_mut(&server) {
                    s.status = "off";
                }
            }
        }
    }
}
