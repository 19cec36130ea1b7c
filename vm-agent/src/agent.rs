//! `vm-agent run`: starts the subsystems (cloudflared supervisor, slice guard, heartbeats,
//! status socket, orphan reaper), tells systemd when they run, keeps the watchdog fed while
//! they keep making progress, and on SIGTERM or SIGINT stops them, cloudflared gracefully,
//! within a bound.
//!
//! Each subsystem is a task that publishes its state on a `watch` channel, marks its progress
//! every time its loop comes round (see `progress`), and stops when the shared shutdown signal
//! turns true. The watchdog must never be fed for a subsystem that is merely not finished: a
//! wedged one withholds the ping, so that systemd restarts the agent.

use std::time::Duration;

use log::Level;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use crate::clock::wall_now;
use crate::config::Config;
use crate::heartbeat::{self, Inputs};
use crate::progress::{self, Mark, Progress};
use crate::reaper::{self, Children};
use crate::{event, slice, status, supervisor, systemd};

/// How often the health loop runs when systemd's watchdog is off.
const HEALTH_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the status socket {path}: {source}")]
    StatusSocket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the {0} stopped unexpectedly")]
    SubsystemDied(&'static str),
}

/// A subsystem as the health loop sees it: its task and its progress.
#[derive(Debug)]
struct Watched {
    name: &'static str,
    task: JoinHandle<()>,
    progress: watch::Receiver<Mark>,
}

impl Watched {
    fn new(name: &'static str, task: JoinHandle<()>, progress: watch::Receiver<Mark>) -> Self {
        Self {
            name,
            task,
            progress,
        }
    }
}

/// What one turn of the health loop found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Turn {
    /// Every subsystem runs and made progress in time: feed the watchdog.
    Ping,
    /// This one has not come round in time: withhold the ping.
    Wedged(&'static str),
    /// This one's task ended.
    Died(&'static str),
}

/// The health loop's memory, so that a wedge is logged once, not on every turn.
#[derive(Debug, Default)]
struct Health {
    wedged: Option<&'static str>,
}

impl Health {
    fn turn(&mut self, watched: &[Watched], now: Instant) -> Turn {
        if let Some(dead) = watched.iter().find(|w| w.task.is_finished()) {
            return Turn::Died(dead.name);
        }
        let marks: Vec<(&'static str, Mark)> = watched
            .iter()
            .map(|w| (w.name, *w.progress.borrow()))
            .collect();
        match progress::healthy(&marks, now) {
            Ok(()) => {
                if let Some(name) = self.wedged.take() {
                    event!(
                        Level::Info,
                        "agent",
                        "the {name} makes progress again; watchdog pings resume"
                    );
                }
                Turn::Ping
            }
            Err(name) => {
                if self.wedged != Some(name) {
                    self.wedged = Some(name);
                    event!(
                        Level::Error,
                        "agent",
                        "the {name} has made no progress in time and seems wedged; watchdog pings stop until it does (systemd restarts an agent that stops pinging)"
                    );
                }
                Turn::Wedged(name)
            }
        }
    }
}

/// Checks the subsystems every `period` and reports each turn, until one of them dies; returns
/// its name.
async fn watch_health(
    watched: &[Watched],
    period: Duration,
    mut report: impl FnMut(Turn),
) -> &'static str {
    let mut health = Health::default();
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let turn = health.turn(watched, Instant::now());
        if let Turn::Died(name) = turn {
            return name;
        }
        report(turn);
    }
}

/// Spawns every subsystem, each with its progress mark, and stops them when `stopped` turns
/// true.
fn start_subsystems(
    config: &Config,
    listener: tokio::net::UnixListener,
    children: Children,
    stopped: watch::Receiver<bool>,
) -> ([Watched; 5], status::Sources) {
    let (reaper_progress, reaper_marks) = Progress::new();
    let reaper_task = reaper::spawn(children.clone(), reaper_progress, stopped.clone());
    let (slice_progress, slice_marks) = Progress::new();
    let (slice, slice_task) = slice::spawn(config.slice.clone(), slice_progress, stopped.clone());
    let (supervisor_progress, supervisor_marks) = Progress::new();
    let (tunnel, supervisor_task) = supervisor::spawn(
        config.cloudflared.clone(),
        children,
        supervisor_progress,
        stopped.clone(),
    );
    let inputs = Inputs {
        tunnel: tunnel.clone(),
        slice: slice.clone(),
    };
    let (heartbeat_progress, heartbeat_marks) = Progress::new();
    let (beats, heartbeat_task) =
        heartbeat::spawn(config.clone(), inputs, heartbeat_progress, stopped.clone());
    let sources = status::Sources {
        agent_id: config.agent_id.clone(),
        image_version: config.image_version.clone(),
        started_at: wall_now(),
        tunnel,
        slice,
        heartbeat: beats,
    };
    let (status_progress, status_marks) = Progress::new();
    let status_task = tokio::spawn(status::serve(
        listener,
        sources.clone(),
        config.status_socket.clone(),
        status_progress,
        stopped,
    ));
    let watched = [
        Watched::new("cloudflared supervisor", supervisor_task, supervisor_marks),
        Watched::new("slice guard", slice_task, slice_marks),
        Watched::new("heartbeat loop", heartbeat_task, heartbeat_marks),
        Watched::new("status socket", status_task, status_marks),
        Watched::new("orphan reaper", reaper_task, reaper_marks),
    ];
    (watched, sources)
}

pub async fn run(config: Config) -> Result<(), RunError> {
    let listener =
        status::bind(&config.status_socket).map_err(|source| RunError::StatusSocket {
            path: config.status_socket.display().to_string(),
            source,
        })?;
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let children = adopt_orphans();

    let (stop, stopped) = watch::channel(false);
    let (watched, sources) = start_subsystems(&config, listener, children, stopped);

    systemd::ready(&summary(&sources));
    event!(
        Level::Info,
        "agent",
        "vm-agent {} started for agent {} on image {}",
        heartbeat::AGENT_VERSION,
        config.agent_id,
        config.image_version
    );
    let watchdog = systemd::watchdog_period();
    let report = |turn| {
        let line = summary(&sources);
        match turn {
            Turn::Ping if watchdog.is_some() => systemd::watchdog(&line),
            Turn::Wedged(name) => systemd::status(&format!("{name} wedged · {line}")),
            _ => systemd::status(&line),
        }
    };
    let outcome = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
        name = watch_health(&watched, watchdog.unwrap_or(HEALTH_PERIOD), report) => {
            // Without a watchdog ping systemd restarts the agent; without systemd, exit.
            event!(
                Level::Error,
                "agent",
                "the {name} stopped unexpectedly; restarting the agent"
            );
            Err(RunError::SubsystemDied(name))
        }
    };

    systemd::stopping();
    event!(
        Level::Info,
        "agent",
        "stopping: cloudflared gets up to {} s to drain",
        config.cloudflared.stop_grace.as_secs()
    );
    let _ = stop.send(true);
    let tasks = watched.into_iter().map(|subsystem| subsystem.task);
    join_within(
        config.cloudflared.stop_grace + Duration::from_secs(5),
        tasks,
    )
    .await;
    event!(Level::Info, "agent", "vm-agent stopped");
    outcome
}

/// Waits up to `bound` for the stopping subsystems.
async fn join_within(bound: Duration, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
    let joined = timeout(bound, async {
        // They all run already: awaiting them in turn takes as long as the slowest.
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    if joined.is_err() {
        event!(
            Level::Error,
            "agent",
            "subsystems did not stop within {} s; exiting anyway",
            bound.as_secs()
        );
    }
}

/// Makes the agent a child subreaper. Orphans cloudflared leaves behind are reparented to us,
/// not to PID 1, so they stay in the agent's unit; the reaper waits on them once they exit, and
/// leaves cloudflared itself (registered in the returned set) to the supervisor, which learns
/// its exit code by waiting on it.
fn adopt_orphans() -> Children {
    let _ = nix::sys::prctl::set_child_subreaper(true);
    Children::default()
}

/// One line for `systemctl status`.
fn summary(sources: &status::Sources) -> String {
    let tunnel = sources.tunnel.borrow();
    let slice = sources.slice.borrow();
    let beats = sources.heartbeat.borrow();
    format!(
        "tunnel {:?} ({} connections) · slice {:?} · control {}",
        tunnel.state,
        tunnel.ready_connections,
        slice.report.state,
        if beats.consecutive_failures == 0 {
            "ok"
        } else {
            "unreachable"
        }
    )
    .to_lowercase()
}

#[cfg(test)]
mod tests {
    use tokio::time::sleep;

    use super::*;

    const PERIOD: Duration = Duration::from_secs(5);

    /// A subsystem whose loop comes round every `every`, and after `turns` turns, if given,
    /// hangs forever in an await.
    fn subsystem(name: &'static str, every: Duration, turns: Option<u32>) -> Watched {
        let (progress, marks) = Progress::new();
        let task = tokio::spawn(async move {
            let mut turn = 0;
            loop {
                progress.next_within(every);
                if turns.is_some_and(|last| turn >= last) {
                    std::future::pending::<()>().await;
                }
                sleep(every).await;
                turn += 1;
            }
        });
        Watched::new(name, task, marks)
    }

    /// The turns the health loop reports within `run_for`, with when they came.
    async fn turns(watched: &[Watched], run_for: Duration) -> Vec<(u64, Turn)> {
        let start = Instant::now();
        let mut turns = Vec::new();
        let died = timeout(
            run_for,
            watch_health(watched, PERIOD, |turn| {
                turns.push((start.elapsed().as_secs(), turn));
            }),
        )
        .await;
        assert!(died.is_err(), "no subsystem died, yet {died:?} did");
        turns
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_while_a_subsystem_hangs() {
        let watched = [
            subsystem("steady", Duration::from_secs(1), None),
            subsystem("hanging", Duration::from_secs(1), Some(3)),
        ];
        // "hanging" marks for the last time at 3 s, promising the next within 1 s + SLACK.
        let overdue_after = 3 + 1 + progress::SLACK.as_secs();
        let turns = turns(&watched, Duration::from_secs(58)).await;
        assert_eq!(turns.len(), 12, "{turns:?}");
        for (at, turn) in turns {
            let expected = if at <= overdue_after {
                Turn::Ping
            } else {
                Turn::Wedged("hanging")
            };
            assert_eq!(turn, expected, "at {at} s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_legitimate_wait_keeps_the_pings_coming() {
        let watched = [
            subsystem("backing off", Duration::from_mins(5), None),
            subsystem("steady", Duration::from_secs(1), None),
        ];
        let turns = turns(&watched, Duration::from_mins(12)).await;
        assert!(turns.len() > 100);
        assert!(
            turns.iter().all(|(_, turn)| *turn == Turn::Ping),
            "{turns:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_subsystem_ends_the_health_loop() {
        let dead = Watched::new(
            "dead",
            tokio::spawn(async {}),
            watch::channel(Mark {
                at: Instant::now(),
                within: Duration::from_hours(1),
            })
            .1,
        );
        let watched = [subsystem("steady", Duration::from_secs(1), None), dead];
        sleep(Duration::from_millis(1)).await;
        let died = timeout(
            Duration::from_mins(1),
            watch_health(&watched, PERIOD, |_| {}),
        )
        .await;
        assert_eq!(died, Ok("dead"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wedge_is_remembered_once_and_forgotten_when_progress_resumes() {
        let (progress, marks) = Progress::new();
        let quiet = Watched::new("quiet", tokio::spawn(std::future::pending()), marks);
        let watched = [quiet];
        let mut health = Health::default();
        assert_eq!(health.turn(&watched, Instant::now()), Turn::Ping);
        let late = Instant::now() + progress::SLACK + Duration::from_secs(1);
        assert_eq!(health.turn(&watched, late), Turn::Wedged("quiet"));
        assert_eq!(health.wedged, Some("quiet"));
        assert_eq!(health.turn(&watched, late), Turn::Wedged("quiet"));
        sleep(progress::SLACK + Duration::from_secs(1)).await;
        progress.next_within(Duration::from_secs(1));
        assert_eq!(health.turn(&watched, Instant::now()), Turn::Ping);
        assert_eq!(health.wedged, None);
    }
}
