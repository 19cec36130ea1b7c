//! Programs under test that run until stopped (`control serve`), watched and stopped by PID.

use std::process::{Command, Stdio};

/// A long-running program under test (such as `control serve`), logging to a file so it can
/// never block on a full pipe, stopped with SIGTERM like systemd would.
#[derive(Debug)]
pub struct Daemon {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
    pub port: u16,
}

impl Daemon {
    /// Spawns `command` and waits until it accepts connections on 127.0.0.1:`port`.
    pub fn start(command: Command, port: u16) -> Self {
        let daemon = Self::spawn(command, port);
        daemon.wait_until("listening", std::time::Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    /// Spawns `command` without waiting for anything (`port` is informational, 0 if none).
    pub fn spawn(mut command: Command, port: u16) -> Self {
        let log = tempfile::NamedTempFile::new().expect("creating a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("opening the log file"))
            .spawn()
            .expect("spawning the daemon");
        Self { child, log, port }
    }

    /// Polls `ready` until it holds; panics with the log if the daemon exits or time runs out.
    pub fn wait_until(
        &self,
        what: &str,
        within: std::time::Duration,
        mut ready: impl FnMut() -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        while !ready() {
            assert!(
                self.is_running(),
                "the daemon exited while waiting for {what}:\n{}",
                self.log()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        // `try_wait` needs `&mut`; a signal 0 asks the kernel without reaping.
        Command::new("kill")
            .args(["-0", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .is_ok_and(|stat| stat.split(' ').nth(2) == Some("Z"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (such as `-TERM`, `-STOP`) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "could not send {signal}");
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM, waits up to 30 s for the exit, and returns its status and log.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        self.wait_exit(std::time::Duration::from_secs(30))
    }

    /// Waits up to `within` for the process to exit; returns its status and log.
    pub fn wait_exit(mut self, within: std::time::Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the daemon") {
                return (status, self.log());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed test must not leave the daemon running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
