//! The control plane: the API behind the dashboard, its storage, ledger and audit log.
//!
//! Folders by duty: `agents` (the Agent service), `jobs` (durable provider work),
//! `ingest` (what vm-agents report), `background` (periodic duties), `ledger`, `providers`
//! (the capability traits and each cloud), `store` (SQLite and PostgreSQL), `http` (routes),
//! `cloud_init` (first-boot documents), `tls` (HTTPS); `server` wires them, `cli` dispatches
//! to it.

pub mod accounts;
pub mod agents;
pub mod app;
pub mod audit;
pub mod auth;
pub mod background;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cloud_init;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod images;
pub mod ingest;
pub mod jobs;
pub mod ledger;
pub mod paging;
pub mod plain_vms;
pub mod predecessor;
pub mod providers;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;
pub mod validate;
pub mod vault_keys;
