//! The control plane: the API behind the dashboard, its storage, ledger and audit log.

pub mod accounts;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod images;
pub mod ingest;
pub mod ledger;
pub mod lifecycle;
pub mod providers;
pub mod reconcile;
pub mod store;
pub mod tasks;
pub mod usage;
pub mod validate;
