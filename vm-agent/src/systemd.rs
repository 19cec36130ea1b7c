//! Talking to systemd: `READY=1` once every subsystem runs, `WATCHDOG=1` from the health loop
//! while they keep making progress, `STATUS=` lines for `systemctl status`, `STOPPING=1` on shutdown.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn watchdog(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often the health loop must ping the watchdog: half its timeout, if it is enabled.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}
