//! The wall clock, for timestamps in status, logs and heartbeats.

use control_api::Timestamp;

/// Now, as a UTC instant in milliseconds.
#[allow(clippy::disallowed_methods)] // the agent's one reading of the wall clock
pub fn wall_now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}
