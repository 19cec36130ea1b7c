//! cloudflared's output, copied into the agent's log: at the level cloudflared gave each
//! line, rate-limited, and with the tunnel token scrubbed should cloudflared ever print it.

use std::time::Instant;

use log::Level;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::event;
use crate::logging::{Admit, RateLimit, cloudflared_level};

/// Copies `pipe` (cloudflared's stdout or stderr) into the log, at most `lines_per_minute`
/// lines a minute, with `token` scrubbed.
pub(super) fn forward(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    token: Option<String>,
    lines_per_minute: u32,
) {
    let mut limit = RateLimit::per_minute(lines_per_minute);
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = match &token {
                Some(token) if line.contains(token.as_str()) => {
                    line.replace(token.as_str(), "[redacted]")
                }
                _ => line,
            };
            let level = cloudflared_level(&line);
            // Lines the log level hides must not use up the budget of those it shows.
            if !log::log_enabled!(target: "cloudflared", level) {
                continue;
            }
            match limit.admit(Instant::now()) {
                Admit::No => {}
                Admit::Yes { dropped_before } => {
                    if dropped_before > 0 {
                        event!(
                            Level::Warn,
                            "cloudflared",
                            "{dropped_before} lines of cloudflared output were dropped (rate limit)"
                        );
                    }
                    event!(level, "cloudflared", "{line}");
                }
            }
        }
    });
}
