//! `vm-agent run`: starts the subsystems (cloudflared supervisor, slice guard, heartbeats,
//! status socket, orphan reaper), tells systemd when they run, keeps the watchdog fed while
//! they keep running, and on SIGTERM or SIGINT stops them, cloudflared gracefully, within a
//! bound.
//!
//! Each subsystem is a task that publishes its state on a `watch` channel and stops when the
//! shared shutdown signal turns true.

use std::time::Duration;

use log::Level;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, timeout};

use crate::clock::wall_now;
use crate::config::Config;
use crate::heartbeat::{self, Inputs};
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
    let reaper_task = reaper::spawn(children.clone(), stopped.clone());
    let (slice, slice_task) = slice::spawn(config.slice.clone(), stopped.clone());
    let (tunnel, supervisor_task) =
        supervisor::spawn(config.cloudflared.clone(), children, stopped.clone());
    let inputs = Inputs {
        tunnel: tunnel.clone(),
        slice: slice.clone(),
    };
    let (beats, heartbeat_task) = heartbeat::spawn(config.clone(), inputs, stopped.clone());
    let sources = status::Sources {
        agent_id: config.agent_id.clone(),
        image_version: config.image_version.clone(),
        started_at: wall_now(),
        tunnel,
        slice,
        heartbeat: beats,
    };
    let status_task = tokio::spawn(status::serve(
        listener,
        sources.clone(),
        config.status_socket.clone(),
        stopped,
    ));
    let tasks = [
        ("cloudflared supervisor", &supervisor_task),
        ("slice guard", &slice_task),
        ("heartbeat loop", &heartbeat_task),
        ("status socket", &status_task),
        ("orphan reaper", &reaper_task),
    ];

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
    let mut health = interval(watchdog.unwrap_or(HEALTH_PERIOD));
    health.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
            _ = health.tick() => {}
        }
        if let Some((name, _)) = tasks.iter().find(|(_, task)| task.is_finished()) {
            // Without a watchdog ping systemd restarts the agent; without systemd, exit.
            event!(
                Level::Error,
                "agent",
                "the {name} stopped unexpectedly; restarting the agent"
            );
            break Err(RunError::SubsystemDied(name));
        }
        let line = summary(&sources);
        if watchdog.is_some() {
            systemd::watchdog(&line);
        } else {
            systemd::status(&line);
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
    let tasks = [
        supervisor_task,
        slice_task,
        heartbeat_task,
        status_task,
        reaper_task,
    ];
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
