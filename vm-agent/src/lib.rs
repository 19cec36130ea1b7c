//! vm-agent: the daemon baked into every Agent's platform image.
//!
//! It supervises `cloudflared` (the VM's only way in), guards the persistent slice
//! `/data/home-coder`, reports to control with heartbeats and logs for support engineers. It
//! depends on control only through the wire types of `control-api`.

pub mod agent;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod heartbeat;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod reaper;
pub mod slice;
pub mod status;
pub mod supervisor;
pub mod systemd;
