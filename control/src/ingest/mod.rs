//! What the agents report: registration, heartbeats, and health judged from them.
//!
//! Built for 100,000 Agents heartbeating to a few replicas. A heartbeat touches no database on
//! its way in: credentials are cached, and the latest heartbeat per Agent is kept in memory and
//! written behind in batches, at most once per `write_every` heartbeats per Agent. Only
//! transitions are written at once: an Agent recorded paused whose VM is seen running, a new
//! boot id, an unhealthy Agent heard from again.
//!
//! A replica that starts finds every Agent heartbeating to it at once, so it loads all
//! credentials in force, with their Agents' records, in pages, rather than reading one per
//! Agent; and it loads them again every half `credential_ttl`, which is how revocations made
//! elsewhere reach it (a cached copy is never trusted longer than `credential_ttl` after it
//! was read). A credential made after a load is read alone on its first use.
//!
//! Each Agent has a custodian, the replica it last heartbeated to, recorded with its liveness.
//! The custodian judges its health from the live value in memory: silent for `unhealthy_after`
//! intervals, it is flagged unhealthy (logged, no period changes). A liveness row is only
//! replaced by a newer one, so custody follows the Agent to whichever replica hears it. Replicas
//! announce themselves; the Agents of a replica that went silent are judged by another
//! (one at a time, under a lease) after a grace period. Silence is counted only from when this
//! replica became available (its start, or the end of a stall of its own) plus the agents'
//! longest backoff, so restarting or freezing control flags nobody.
//!
//! The parts, one file each: [`credentials`] (bootstrap tokens and credentials),
//! [`heartbeats`] (taking one in, and the transitions it calls for), [`write_behind`],
//! [`health`] (judging silence) and [`replicas`] (announcing this one, judging the Agents of
//! those that went away). Ingest holds what it needs itself (the store, the clock); it may
//! call the store, the ledger through `agents::record_observed`, and nothing that calls it.

mod credentials;
mod health;
mod heartbeats;
mod records;
mod replicas;
mod write_behind;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use control_api::agent::{Heartbeat, SliceState, TunnelState};

use crate::clock::SharedClock;
use crate::store::{Store, StoreError};
use crate::sync;

pub use credentials::{Loaded, new_bootstrap_token};
pub use records::Records;

/// Prefix of agent credentials: `agc_<credential id>_<64 hex digits>`.
const CREDENTIAL_PREFIX: &str = "agc_";
/// Prefix of bootstrap tokens: `agb_<64 hex digits>`.
const BOOTSTRAP_PREFIX: &str = "agb_";
const SHARDS: usize = 64;

/// Tunables of ingestion and health.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// The heartbeat interval control answers with.
    pub interval: Duration,
    /// Silent for this many intervals, a running Agent is unhealthy.
    pub unhealthy_after: u32,
    /// Heartbeats per Agent per row written behind.
    pub write_every: u32,
    /// How long a bootstrap token may wait for its one use.
    pub bootstrap_ttl: Duration,
    /// How long a credential lookup is trusted before it is read again (revocations reach
    /// other replicas within this).
    pub credential_ttl: Duration,
    /// Silent this long, a replica is gone and others judge its Agents.
    pub replica_timeout: Duration,
    /// After a confirmed stop, heartbeats still in flight from the stopped process are ignored
    /// for this long.
    pub stop_quiet: Duration,
    /// Load every credential in force at start and again every half `credential_ttl`, in
    /// pages; when false, each credential is read on its first use and again once its
    /// cached copy is `credential_ttl` old (the ingest benchmark's baseline).
    pub preload_credentials: bool,
    /// The longest an agent waits between heartbeat attempts while control is unreachable
    /// (vm-agent's `heartbeat.backoff_max_s`): after control itself was unavailable (started,
    /// or stalled), silence is counted only from then plus this.
    pub agent_backoff_max: Duration,
    /// A gap this long between two health judgements means this replica was stalled (frozen,
    /// suspended, starved): its Agents' heartbeats may have failed meanwhile.
    pub stall_after: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            unhealthy_after: 3,
            write_every: 20,
            bootstrap_ttl: Duration::from_hours(24),
            credential_ttl: Duration::from_mins(1),
            replica_timeout: Duration::from_secs(30),
            stop_quiet: Duration::from_secs(30),
            preload_credentials: true,
            agent_backoff_max: Duration::from_mins(5),
            stall_after: Duration::from_secs(5),
        }
    }
}

impl IngestSettings {
    /// How long a running Agent may be silent before it is called unhealthy.
    pub fn silence_limit(&self) -> Duration {
        self.interval.saturating_mul(self.unhealthy_after)
    }

    /// How long after control is available again an Agent that reported before may still be
    /// silent: the silence limit plus the agents' longest backoff.
    pub fn resume_grace(&self) -> Duration {
        self.silence_limit() + self.agent_backoff_max
    }

    /// How long an Agent's liveness row may go unwritten while its states do not change.
    pub fn write_period(&self) -> Duration {
        self.interval.saturating_mul(self.write_every)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
}

/// An Agent's latest heartbeat, as [`Ingest::latest`] found it.
#[derive(Clone, Debug)]
pub struct Latest {
    /// When it came.
    pub seen_at: i64,
    pub beat: Heartbeat,
    /// Read from the database, as another replica wrote it behind.
    pub written_behind: bool,
}

/// Counters for `/metrics` and the ingest benchmark.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub heartbeats: AtomicU64,
    pub liveness_rows_written: AtomicU64,
    pub transitions: AtomicU64,
    pub refused: AtomicU64,
    /// Credentials read one at a time (a miss of the cache, or a copy too old).
    pub credential_reads: AtomicU64,
}

#[derive(Clone, Debug)]
struct CachedCredential {
    agent_id: String,
    secret_hash: [u8; 32],
    revoked: bool,
    /// When the database said so; the copy is trusted for `credential_ttl` from then.
    fetched_at: i64,
    /// The load that last found it in force (0: read alone, or revoked here).
    load: u64,
}

/// The live view of one Agent this replica hears from.
#[derive(Debug)]
struct Live {
    last_seen: i64,
    latest: Heartbeat,
    /// When the sending vm-agent process started, by its uptime.
    process_started: i64,
    /// When this replica last wrote the Agent's liveness; `None`: never (custody pending).
    written_at: Option<i64>,
    beats_since_write: u32,
    /// Something worth writing at the next flush changed (a clone's copy state).
    urgent: bool,
    unhealthy: bool,
    /// Heartbeats from a process started before this instant come from a stopped VM.
    ignore_before: Option<i64>,
}

/// A transition one heartbeat calls for, written at once.
#[derive(Debug, Default)]
struct Transition {
    rebooted_from: Option<String>,
    healthy_again: bool,
    maybe_running: bool,
    /// What support sees changed (tunnel or slice state, restarts, crash loop, last exit,
    /// versions): written at once so every replica shows it within a heartbeat.
    support_changed: bool,
}

impl Transition {
    fn any(&self) -> bool {
        self.rebooted_from.is_some()
            || self.healthy_again
            || self.maybe_running
            || self.support_changed
    }
}

/// The ingestion state of one replica.
#[derive(Debug)]
pub struct Ingest {
    store: Store,
    clock: SharedClock,
    replica_id: String,
    started_at: i64,
    /// Since when this replica has been available without a stall: its start, or the end of
    /// its latest stall.
    available_since: AtomicI64,
    /// When health was last judged (0: never), to notice stalls.
    last_judged: AtomicI64,
    settings: IngestSettings,
    credentials: RwLock<HashMap<String, CachedCredential>>,
    /// While the first load of credentials is under way, the pages it has cached plus one (0
    /// otherwise): a heartbeat missing the cache waits for its page instead of reading its
    /// credential alone.
    loading: tokio::sync::watch::Sender<u64>,
    /// Numbers the loads.
    loads: AtomicU64,
    shards: Box<[Mutex<HashMap<String, Live>>]>,
    records: Arc<Records>,
    hasher: std::collections::hash_map::RandomState,
    pub stats: IngestStats,
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).into()
}

fn tunnel_text(state: TunnelState) -> &'static str {
    match state {
        TunnelState::Starting => "starting",
        TunnelState::Ready => "ready",
        TunnelState::Unready => "unready",
        TunnelState::Backoff => "backoff",
        TunnelState::Failed => "failed",
        TunnelState::Stopping => "stopping",
    }
}

fn slice_text(state: SliceState) -> &'static str {
    match state {
        SliceState::Mounted => "mounted",
        SliceState::Missing => "missing",
        SliceState::ReadOnly => "read_only",
        SliceState::WrongOwner => "wrong_owner",
        SliceState::NearlyFull => "nearly_full",
    }
}

impl Ingest {
    pub fn new(
        store: Store,
        clock: SharedClock,
        replica_id: String,
        settings: IngestSettings,
    ) -> Self {
        Self {
            started_at: clock.now().as_millis(),
            available_since: AtomicI64::new(clock.now().as_millis()),
            last_judged: AtomicI64::new(0),
            store,
            clock,
            replica_id,
            settings,
            credentials: RwLock::new(HashMap::new()),
            loading: tokio::sync::watch::Sender::new(0),
            loads: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            records: Arc::new(Records::default()),
            hasher: std::collections::hash_map::RandomState::new(),
            stats: IngestStats::default(),
        }
    }

    /// What this replica knows of Agents' records; whoever changes a record forgets it here.
    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }

    /// How many Agents this replica holds in memory.
    pub fn agents_in_memory(&self) -> usize {
        self.shards.iter().map(|s| sync::lock(s).len()).sum()
    }

    /// The latest heartbeat of `agent_id` and when it came: the newer of this replica's own
    /// (if it hears from the Agent) and what the database holds, written by whichever replica
    /// heard it last (its figures may be a write period old; its states, restarts, versions
    /// and boot id are written within a heartbeat of changing).
    pub async fn latest(&self, agent_id: &str) -> Result<Option<Latest>, StoreError> {
        let own = sync::lock(self.shard(agent_id))
            .get(agent_id)
            .map(|live| Latest {
                seen_at: live.last_seen,
                beat: live.latest.clone(),
                written_behind: false,
            });
        let Some(row) = self.store.read().await?.liveness(agent_id).await? else {
            return Ok(own);
        };
        if let Some(own) = own
            && own.seen_at >= row.last_seen_at
        {
            return Ok(Some(own));
        }
        let beat = serde_json::from_str(&row.report).map_err(|e| {
            StoreError::Corrupt(format!("agent {agent_id}'s latest heartbeat: {e}"))
        })?;
        Ok(Some(Latest {
            seen_at: row.last_seen_at,
            beat,
            written_behind: true,
        }))
    }

    /// How long `latest` may have been silent before it says the Agent is: the silence limit,
    /// plus a write period when it was read from what another replica wrote behind (which
    /// rewrites a heartbeat whose states did not change only that often).
    pub fn silent_after(&self, latest: &Latest) -> Duration {
        let limit = self.settings.silence_limit();
        if latest.written_behind {
            limit + self.settings.write_period()
        } else {
            limit
        }
    }

    fn shard(&self, agent_id: &str) -> &Mutex<HashMap<String, Live>> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(agent_id.as_bytes());
        let index = usize::try_from(hasher.finish() % SHARDS as u64).unwrap_or(0);
        &self.shards[index]
    }

    fn interval_s(&self) -> u32 {
        u32::try_from(self.settings.interval.as_secs()).unwrap_or(u32::MAX)
    }

    /// Follows lifecycle changes made by any replica, so heartbeats are judged against the
    /// Agent's current record without reading it each time. Returns how many changes it read.
    pub async fn follow_changes(&self) -> Result<usize, StoreError> {
        let now = self.clock.now().as_millis();
        let followed = self.records.follow(&self.store, now).await?;
        for agent_id in followed.destroyed {
            sync::lock(self.shard(&agent_id)).remove(&agent_id);
        }
        Ok(followed.read)
    }
}
