//! Loopback fakes of the providers' HTTP APIs, so control's provider clients are tested against the
//! real wire protocol (paths, JSON shapes, status codes, error envelopes, rate limits) without an
//! account. One module per provider; each serves on 127.0.0.1 (or a given address) and must never
//! reach the network: `hetzner`, `cloudflare` and `fly` (the Fly Machines API, for the legacy
//! cohort of Agents that runs there).

pub mod cloudflare;
/// What every fake shares: faults, call counts, recorded answers, the gate, `Control`, serving.
mod common;
pub mod fly;
pub mod hetzner;
