//! vm-agent: the daemon baked into every Agent's platform image.
//!
//! It supervises `cloudflared` (the VM's only way in), guards the persistent slice
//! `/data/home-coder`, reports to control with heartbeats and logs for support engineers. It
//! depends on control only through the wire types of `control-api`. On a clone's first boot,
//! `vm-agent clone-slice` copies the source Agent's slice into this VM's (see [`clone`]).

pub mod agent;
pub mod backoff;
pub mod clock;
pub mod clone;
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
