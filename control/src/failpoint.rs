//! Named crash windows, for the tests that kill control inside one. With
//! `CONTROL_FAILPOINT=<name>` in its environment control stops dead when it reaches that point:
//! it logs one line and parks the thread, waiting to be killed by the test. Unset (always,
//! outside those tests) a failpoint costs one atomic load.
//!
//! The windows: `local-vm-recorded` (a local VM's record is written, its vm-agent not yet
//! started), `local-agent-spawned` (its vm-agent started, the process not yet recorded), and
//! `job-step:<step>` for every step of every job (the step has acted, its output is not yet
//! recorded: the next run does it again, as after any crash there; `undo:<step>` for an undo
//! step).

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable naming the failpoint to stop at.
pub const ENV: &str = "CONTROL_FAILPOINT";

/// Stops here for good if `name` is the armed failpoint.
pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    // Not configuration: a test's switch, read once, never in production.
    let armed = ARMED
        .get_or_init(|| std::env::var_os(ENV).map(|value| value.to_string_lossy().into_owned()));
    if armed.as_deref() != Some(name) {
        return;
    }
    tracing::warn!(
        failpoint = name,
        "failpoint reached: stopping here until killed"
    );
    loop {
        std::thread::sleep(Duration::from_hours(1));
    }
}
