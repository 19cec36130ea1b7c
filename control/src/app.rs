//! The shared context every request, job and command works with.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::auth::Principal;
use crate::clock::SharedClock;
use crate::ids::{new_id, prefix};
use crate::ingest::{Ingest, IngestSettings};
use crate::providers::Providers;
use crate::store::Store;

/// Tunables of the background work.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a claimed job is ours before another replica may take it over.
    pub job_lease: Duration,
    /// Attempts before a job with transient provider errors fails for good.
    pub job_max_attempts: i64,
    /// The first retry delay; it doubles per attempt up to `job_retry_cap`.
    pub job_retry_base: Duration,
    pub job_retry_cap: Duration,
    /// How long a job may wait for the provider to get where it was asked to (a server to
    /// start, to shut down) before the wait counts as a failure.
    pub job_wait_limit: Duration,
    /// How long a stopping Agent's OS gets to shut down (ACPI) before its power is cut.
    pub stop_grace: Duration,
    /// The size of a new Agent's slice volume, in GB (Hetzner's smallest is 10).
    pub slice_size_gb: u32,
    /// Where Agents' VMs reach control (its public URL), written into their `agent.toml`.
    pub control_url: String,
    /// Agents are reached at `<agent>.<agent_domain>` through their tunnels.
    pub agent_domain: String,
    /// What an Agent's tunnel routes its hostname to, on the VM.
    pub tunnel_service: String,
    /// Whether the sweeper deletes the unowned resources it finds (else it only reports them).
    pub sweep_remove: bool,
    /// Runs every job step a second time as soon as it succeeds, and fails the job if the two
    /// runs disagree: the step tests' proof that a step repeated after a crash does nothing
    /// new. Off in service.
    pub replay_steps: bool,
    pub ingest: IngestSettings,
    /// What a Plain VM is made as when its request does not say.
    pub plain_vms: PlainVmDefaults,
}

/// The `[plain_vms]` defaults: what a Plain VM is made as when its request does not say, and
/// whom its image's keys and password are for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainVmDefaults {
    pub server_type: String,
    pub location: String,
    /// A provider image by name or id.
    pub image: String,
    /// The images' default user (Hetzner's stock images log in as `root`).
    pub default_user: String,
}

impl Default for PlainVmDefaults {
    fn default() -> Self {
        Self {
            server_type: "cx22".to_owned(),
            location: "fsn1".to_owned(),
            image: "debian-12".to_owned(),
            default_user: "root".to_owned(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            job_lease: Duration::from_mins(5),
            job_max_attempts: 8,
            job_retry_base: Duration::from_secs(2),
            job_retry_cap: Duration::from_mins(5),
            job_wait_limit: Duration::from_mins(15),
            stop_grace: Duration::from_mins(1),
            slice_size_gb: 10,
            control_url: "http://127.0.0.1:8080".to_owned(),
            agent_domain: "agents.localhost".to_owned(),
            tunnel_service: "http://localhost:8080".to_owned(),
            sweep_remove: false,
            replay_steps: false,
            ingest: IngestSettings::default(),
            plain_vms: PlainVmDefaults::default(),
        }
    }
}

/// Cheap to clone (one reference count: the HTTP server clones it for every request); shared
/// by the HTTP handlers, the job runner and the command line. Its parts are [`AppParts`]'s.
#[derive(Clone, Debug)]
pub struct App(Arc<AppParts>);

impl std::ops::Deref for App {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What an [`App`] holds.
#[derive(Debug)]
pub struct AppParts {
    pub store: Store,
    pub clock: SharedClock,
    pub providers: Providers,
    pub settings: Settings,
    /// Names this process in job leases.
    pub replica_id: String,
    /// Rung when a job is queued, so the local runner starts it without waiting for its poll.
    pub jobs_queued: Arc<Notify>,
    /// What this replica hears from the agents.
    pub ingest: Arc<Ingest>,
    /// One-time password hashes on their way from a request to its provisioning job.
    pub passwords: Arc<crate::plain_vms::Passwords>,
}

impl App {
    pub fn new(store: Store, clock: SharedClock, providers: Providers, settings: Settings) -> Self {
        let replica_id = new_id("replica");
        let ingest = Arc::new(Ingest::new(
            store.clone(),
            clock.clone(),
            replica_id.clone(),
            settings.ingest.clone(),
        ));
        Self(Arc::new(AppParts {
            store,
            clock,
            providers,
            settings,
            replica_id,
            jobs_queued: Arc::new(Notify::new()),
            ingest,
            passwords: Arc::default(),
        }))
    }
}

/// Who is asking, and under which request id (for logs and the audit log).
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    /// Ours, never one the caller chose.
    pub request_id: String,
    /// The caller's own `X-Request-Id`, recorded beside ours.
    pub caller_request_id: Option<String>,
}

impl Caller {
    /// `request_id` is ours (a new one if `None`).
    pub fn new(principal: Principal, request_id: Option<String>) -> Self {
        Self {
            principal,
            request_id: request_id.unwrap_or_else(|| new_id(prefix::REQUEST)),
            caller_request_id: None,
        }
    }

    /// The account a request that may name one (`account_id`) is for: an account token's
    /// own, or the one an operator names; otherwise a complaint about `account_id` for
    /// `checks`.
    pub fn target_account<'a>(&'a self, named: Option<&'a str>) -> Result<&'a str, &'static str> {
        match (self.principal.account_scope(), named) {
            (Some(own), None) => Ok(own),
            (None, Some(named)) => Ok(named),
            (Some(_), Some(_)) => {
                Err("only operator tokens name an account; account tokens act for their own")
            }
            (None, None) => Err("is required with an operator token"),
        }
    }
}
