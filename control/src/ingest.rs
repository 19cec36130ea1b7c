//! What the agents report: registration, heartbeats, and health judged from them.
//!
//! Built for 100,000 Agents heartbeating to a few replicas. A heartbeat touches no database on
//! its way in: credentials are cached, and the latest heartbeat per Agent is kept in memory and
//! written behind in batches, at most once per `write_every` heartbeats per Agent. Only
//! transitions are written at once: an Agent recorded paused whose VM is seen running, a new
//! boot id, an unhealthy Agent heard from again.
//!
//! Each Agent has a custodian, the replica it last heartbeated to, recorded with its liveness.
//! The custodian judges its health from the live value in memory: silent for `unhealthy_after`
//! intervals, it is flagged unhealthy (logged, no period changes). A liveness row is only
//! replaced by a newer one, so custody follows the Agent to whichever replica hears it. Replicas
//! announce themselves; the Agents of a replica that went silent are judged by another
//! (one at a time, under a lease) after a grace period, and so are all Agents right after a
//! replica starts, so restarting control flags nobody.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use control_api::Timestamp;
use control_api::agent::{
    Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse, SliceState, TunnelState,
};
use control_api::agents::{AgentOperation, PeriodState};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::ids::{new_id, prefix};
use crate::ledger;
use crate::store::{AgentChange, CredentialRow, DbText, LIVENESS_BATCH, LivenessRow, StoreError};

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
        }
    }
}

impl IngestSettings {
    /// How long a running Agent may be silent before it is called unhealthy.
    pub fn silence_limit(&self) -> Duration {
        self.interval.saturating_mul(self.unhealthy_after)
    }

    fn write_period(&self) -> Duration {
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

/// Counters for `/metrics` and the ingest benchmark.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub heartbeats: AtomicU64,
    pub liveness_rows_written: AtomicU64,
    pub transitions: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Clone, Debug)]
struct CachedCredential {
    agent_id: String,
    secret_hash: [u8; 32],
    revoked: bool,
    fetched_at: i64,
}

/// What this replica knows of an Agent's record, kept fresh by polling lifecycle changes.
#[derive(Clone, Debug)]
struct Known {
    account_id: String,
    state: PeriodState,
    operation: Option<AgentOperation>,
    destroyed: bool,
}

impl Known {
    fn from_change(change: &AgentChange) -> Result<Self, StoreError> {
        Ok(Self {
            account_id: change.account_id.clone(),
            state: PeriodState::from_db(&change.state)?,
            operation: change
                .operation
                .as_deref()
                .map(AgentOperation::from_db)
                .transpose()?,
            destroyed: change.destroyed_at.is_some(),
        })
    }
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
    /// Something worth writing at the next flush changed (tunnel or slice state).
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
}

impl Transition {
    fn any(&self) -> bool {
        self.rebooted_from.is_some() || self.healthy_again || self.maybe_running
    }
}

/// The ingestion state of one replica.
#[derive(Debug)]
pub struct Ingest {
    replica_id: String,
    started_at: i64,
    settings: IngestSettings,
    credentials: RwLock<HashMap<String, CachedCredential>>,
    shards: Box<[Mutex<HashMap<String, Live>>]>,
    known: RwLock<HashMap<String, Known>>,
    /// The newest `agents.updated_at` the poll has seen.
    known_through: AtomicI64,
    hasher: std::collections::hash_map::RandomState,
    pub stats: IngestStats,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// A new bootstrap token for an Agent: the text for its VM and the hash to store.
pub fn new_bootstrap_token() -> Result<(String, String), crate::auth::RandomError> {
    let token = format!("{BOOTSTRAP_PREFIX}{}", crate::auth::random_secret()?);
    let hash = hex::encode(sha256(&token));
    Ok((token, hash))
}

impl Ingest {
    pub fn new(replica_id: String, started_at: Timestamp, settings: IngestSettings) -> Self {
        Self {
            replica_id,
            started_at: started_at.as_millis(),
            settings,
            credentials: RwLock::new(HashMap::new()),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            known: RwLock::new(HashMap::new()),
            known_through: AtomicI64::new(0),
            hasher: std::collections::hash_map::RandomState::new(),
            stats: IngestStats::default(),
        }
    }

    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// How many Agents this replica holds in memory.
    pub fn agents_in_memory(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
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

    /// Trades a bootstrap token for a credential, once.
    pub async fn register(
        &self,
        app: &App,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, IngestError> {
        const REFUSED: &str = "bootstrap token refused: unknown, already used or expired";
        if !crate::ids::looks_like(prefix::AGENT, &request.agent_id) {
            return Err(IngestError::Unauthorized(REFUSED));
        }
        let now = app.clock.now().as_millis();
        let mut tx = app.store.write().await?;
        let Some(bootstrap) = tx.bootstrap(&request.agent_id).await? else {
            return Err(IngestError::Unauthorized(REFUSED));
        };
        let offered = hex::encode(sha256(request.bootstrap_token.trim()));
        let matches: bool = offered
            .as_bytes()
            .ct_eq(bootstrap.token_hash.as_bytes())
            .into();
        if !matches || bootstrap.used_at.is_some() || bootstrap.expires_at <= now {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::Unauthorized(REFUSED));
        }
        let Some(agent) = tx.agent_change(&request.agent_id).await? else {
            return Err(IngestError::Unauthorized(REFUSED));
        };
        if agent.destroyed_at.is_some() || !tx.spend_bootstrap(&request.agent_id, now).await? {
            return Err(IngestError::Unauthorized(REFUSED));
        }
        let secret = crate::auth::random_secret()?;
        let credential = CredentialRow {
            id: new_id("crd"),
            agent_id: request.agent_id.clone(),
            secret_hash: hex::encode(sha256(&secret)),
            revoked_at: None,
        };
        tx.insert_credential(&credential, now).await?;
        tx.commit().await?;
        info!(
            agent_id = %request.agent_id,
            account_id = %agent.account_id,
            boot_id = %request.boot_id,
            agent_version = %request.agent_version,
            image_version = %request.image_version,
            "agent registered: bootstrap token exchanged for a credential"
        );
        Ok(RegisterResponse {
            agent_id: request.agent_id.clone(),
            credential: format!("{CREDENTIAL_PREFIX}{}_{secret}", credential.id),
            heartbeat_interval_s: self.interval_s(),
        })
    }

    /// The Agent a bearer credential stands for.
    async fn authenticate(&self, app: &App, bearer: &str, now: i64) -> Result<String, IngestError> {
        const REFUSED: &str = "agent credential refused: unknown or revoked";
        let parsed = bearer
            .strip_prefix(CREDENTIAL_PREFIX)
            .and_then(|rest| rest.rsplit_once('_'))
            .filter(|(id, secret)| {
                crate::ids::looks_like("crd", id)
                    && secret.len() == 64
                    && secret.bytes().all(|b| b.is_ascii_hexdigit())
            });
        let Some((id, secret)) = parsed else {
            return Err(IngestError::Unauthorized(REFUSED));
        };
        let ttl = millis(self.settings.credential_ttl);
        let cached = self
            .credentials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .filter(|c| now - c.fetched_at < ttl)
            .cloned();
        let credential = match cached {
            Some(credential) => credential,
            None => self
                .load_credential(app, id, now)
                .await?
                .ok_or(IngestError::Unauthorized(REFUSED))?,
        };
        let matches: bool = sha256(secret).ct_eq(&credential.secret_hash).into();
        if !matches || credential.revoked {
            return Err(IngestError::Unauthorized(REFUSED));
        }
        Ok(credential.agent_id)
    }

    /// Reads a credential and caches it; `None` if there is no such credential.
    async fn load_credential(
        &self,
        app: &App,
        id: &str,
        now: i64,
    ) -> Result<Option<CachedCredential>, IngestError> {
        let Some(row) = app.store.read().await?.credential(id).await? else {
            return Ok(None);
        };
        let mut secret_hash = [0u8; 32];
        if hex::decode_to_slice(&row.secret_hash, &mut secret_hash).is_err() {
            return Err(
                StoreError::Corrupt(format!("credential {id} has a malformed hash")).into(),
            );
        }
        let credential = CachedCredential {
            agent_id: row.agent_id,
            secret_hash,
            revoked: row.revoked_at.is_some(),
            fetched_at: now,
        };
        self.credentials
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), credential.clone());
        Ok(Some(credential))
    }

    /// What this replica knows of the Agent, read once if it is new to it.
    async fn known(&self, app: &App, agent_id: &str) -> Result<Option<Known>, IngestError> {
        if let Some(known) = self
            .known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent_id)
        {
            return Ok(Some(known.clone()));
        }
        let Some(change) = app.store.read().await?.agent_change(agent_id).await? else {
            return Ok(None);
        };
        let known = Known::from_change(&change)?;
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent_id.to_owned(), known.clone());
        Ok(Some(known))
    }

    /// The Agent a heartbeat's bearer credential stands for; checked before its body is read.
    pub async fn authenticate_heartbeat(
        &self,
        app: &App,
        bearer: &str,
    ) -> Result<String, IngestError> {
        let now = app.clock.now().as_millis();
        // A refusal counts; a database that does not answer is not the agent's doing.
        self.authenticate(app, bearer, now)
            .await
            .inspect_err(|error| {
                if matches!(
                    error,
                    IngestError::Unauthorized(_) | IngestError::Forbidden(_)
                ) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
            })
    }

    /// Takes one heartbeat in, with its credential. Touches the database only for a transition.
    pub async fn heartbeat(
        &self,
        app: &App,
        bearer: &str,
        beat: Heartbeat,
    ) -> Result<HeartbeatAck, IngestError> {
        let agent_id = self.authenticate_heartbeat(app, bearer).await?;
        self.heartbeat_of(app, &agent_id, beat).await
    }

    /// Takes one heartbeat of an authenticated Agent in.
    pub async fn heartbeat_of(
        &self,
        app: &App,
        agent_id: &str,
        beat: Heartbeat,
    ) -> Result<HeartbeatAck, IngestError> {
        let now = app.clock.now().as_millis();
        let refused = |error| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            error
        };
        if beat
            .agent_id
            .as_deref()
            .is_some_and(|claimed| claimed != agent_id)
        {
            return Err(refused(IngestError::Forbidden(
                "this credential belongs to another Agent".to_owned(),
            )));
        }
        let Some(known) = self.known(app, agent_id).await? else {
            return Err(refused(IngestError::Unauthorized(
                "agent credential refused: unknown or revoked",
            )));
        };
        if known.destroyed {
            return Err(refused(IngestError::Forbidden(format!(
                "agent {agent_id} is destroyed"
            ))));
        }
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        let transition = self.observe(agent_id, &known, beat, now);
        if transition.any() {
            self.transition(app, agent_id, &known, transition, now)
                .await?;
        }
        Ok(HeartbeatAck {
            heartbeat_interval_s: self.interval_s(),
        })
    }

    /// Updates the live view; returns what must be written at once.
    fn observe(&self, agent_id: &str, known: &Known, beat: Heartbeat, now: i64) -> Transition {
        let process_started =
            now - i64::try_from(beat.agent_uptime_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
        let recorded_paused = known.state == PeriodState::Paused && known.operation.is_none();
        let mut shard = lock(self.shard(agent_id));
        let mut transition = Transition::default();
        match shard.get_mut(agent_id) {
            None => {
                transition.maybe_running = recorded_paused;
                shard.insert(
                    agent_id.to_owned(),
                    Live {
                        last_seen: now,
                        latest: beat,
                        process_started,
                        written_at: None,
                        beats_since_write: 1,
                        urgent: false,
                        unhealthy: false,
                        ignore_before: None,
                    },
                );
            }
            Some(live) => {
                if live.latest.boot_id != beat.boot_id {
                    transition.rebooted_from = Some(live.latest.boot_id.clone());
                }
                transition.healthy_again = live.unhealthy;
                transition.maybe_running = recorded_paused
                    && live
                        .ignore_before
                        .is_none_or(|before| process_started >= before);
                live.urgent |= live.latest.cloudflared.state != beat.cloudflared.state
                    || live.latest.slice.state != beat.slice.state;
                live.last_seen = now;
                live.process_started = process_started;
                live.latest = beat;
                live.beats_since_write = live.beats_since_write.saturating_add(1);
            }
        }
        transition
    }

    fn count_written(&self, rows: usize) {
        self.stats
            .liveness_rows_written
            .fetch_add(u64::try_from(rows).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn liveness_row(&self, agent_id: &str, live: &Live) -> LivenessRow {
        LivenessRow {
            agent_id: agent_id.to_owned(),
            custodian: self.replica_id.clone(),
            last_seen_at: live.last_seen,
            boot_id: live.latest.boot_id.clone(),
            sequence: i64::try_from(live.latest.sequence).unwrap_or(i64::MAX),
            agent_version: live.latest.agent_version.clone(),
            tunnel_state: tunnel_text(live.latest.cloudflared.state).to_owned(),
            slice_state: slice_text(live.latest.slice.state).to_owned(),
            report: serde_json::to_string(&live.latest).unwrap_or_default(),
            unhealthy_since: None,
        }
    }

    /// Writes a transition at once: the ledger first (the Agent row's lock), then liveness.
    async fn transition(
        &self,
        app: &App,
        agent_id: &str,
        known: &Known,
        transition: Transition,
        now: i64,
    ) -> Result<(), IngestError> {
        let Some((row, process_started)) = ({
            let shard = lock(self.shard(agent_id));
            shard
                .get(agent_id)
                .map(|live| (self.liveness_row(agent_id, live), live.process_started))
        }) else {
            return Ok(());
        };
        let mut tx = app.store.write().await?;
        let mut now_running = false;
        let mut ignore_before = None;
        if transition.maybe_running
            && let Some(open) = tx.open_period(agent_id).await?
        {
            let stopped_recently = now - open.started_at < millis(self.settings.stop_quiet);
            if open.state == PeriodState::Paused
                && stopped_recently
                && process_started < open.started_at
            {
                // An in-flight heartbeat from the process a stop just ended.
                ignore_before = Some(open.started_at);
            } else if tx.observe_running(agent_id, now).await? {
                // The owner as of now, under the row lock: a transfer may have just moved it.
                let owner = tx
                    .agent_change(agent_id)
                    .await?
                    .map_or_else(|| known.account_id.clone(), |a| a.account_id);
                ledger::switch(
                    &mut tx,
                    agent_id,
                    &owner,
                    PeriodState::Running,
                    Timestamp::from_millis(now),
                )
                .await?;
                now_running = true;
            }
        }
        let written = tx.write_liveness(std::slice::from_ref(&row), true).await?;
        tx.commit().await?;
        self.stats.transitions.fetch_add(1, Ordering::Relaxed);
        self.count_written(written.len());
        if let Some(live) = lock(self.shard(agent_id)).get_mut(agent_id) {
            live.written_at = Some(now);
            live.beats_since_write = 0;
            live.urgent = false;
            live.unhealthy = false;
            live.ignore_before = ignore_before.or(live.ignore_before);
        }
        if now_running {
            if let Some(known) = self
                .known
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(agent_id)
            {
                known.state = PeriodState::Running;
            }
            info!(agent_id, account_id = %known.account_id, "agent seen running: its heartbeat records it running from now");
        }
        if let Some(from) = &transition.rebooted_from {
            info!(agent_id, account_id = %known.account_id, from_boot_id = %from, boot_id = %row.boot_id, "agent rebooted: new boot id");
        }
        if transition.healthy_again {
            info!(agent_id, account_id = %known.account_id, "agent healthy again: heartbeats resumed");
        }
        if ignore_before.is_some() {
            debug!(
                agent_id,
                "ignored a heartbeat from a process stopped moments ago"
            );
        }
        Ok(())
    }

    /// Writes behind what is due: new Agents (custody), state changes, and Agents unwritten
    /// for `write_every` heartbeats; with `everything`, all that changed (at shutdown).
    pub async fn flush(&self, app: &App, everything: bool) -> Result<usize, StoreError> {
        let now = app.clock.now().as_millis();
        let due_before = now - millis(self.settings.write_period());
        let mut rows = Vec::new();
        for shard in &*self.shards {
            for (agent_id, live) in lock(shard).iter() {
                let due = live.written_at.is_none()
                    || live.urgent
                    || (live.beats_since_write > 0
                        && (everything || live.written_at.is_some_and(|at| at <= due_before)));
                if due {
                    rows.push(self.liveness_row(agent_id, live));
                }
            }
        }
        let mut total = 0;
        for chunk in rows.chunks(LIVENESS_BATCH) {
            let mut tx = app.store.write().await?;
            let written = tx.write_liveness(chunk, true).await?;
            tx.commit().await?;
            total += written.len();
            self.count_written(written.len());
            let written: std::collections::HashSet<&str> =
                written.iter().map(String::as_str).collect();
            for row in chunk {
                let mut shard = lock(self.shard(&row.agent_id));
                if written.contains(row.agent_id.as_str()) {
                    if let Some(live) = shard.get_mut(&row.agent_id) {
                        live.written_at = Some(now);
                        live.beats_since_write = 0;
                        live.urgent = false;
                    }
                } else {
                    // Another replica heard from it more recently: it is that replica's now.
                    shard.remove(&row.agent_id);
                }
            }
        }
        Ok(total)
    }

    /// Forgets what this replica knew of an Agent's record (it just changed it), so the next
    /// heartbeat reads it afresh instead of waiting for the poll.
    pub fn forget(&self, agent_id: &str) {
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(agent_id);
    }

    /// Follows lifecycle changes made by any replica, so heartbeats are judged against the
    /// Agent's current record without reading it each time.
    pub async fn follow_changes(&self, app: &App) -> Result<(), StoreError> {
        // Re-read a few seconds back: replicas' clocks and commit order differ slightly.
        let from = (self.known_through.load(Ordering::Relaxed) - 5_000).max(0);
        let mut after = from;
        loop {
            let changes = app
                .store
                .read()
                .await?
                .agents_changed_since(after, 1_000)
                .await?;
            let done = changes.len() < 1_000;
            let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
            let mut destroyed = Vec::new();
            for change in &changes {
                after = after.max(change.updated_at);
                if change.destroyed_at.is_some() {
                    known.remove(&change.id);
                    destroyed.push(change.id.as_str());
                } else if known.contains_key(&change.id) {
                    known.insert(change.id.clone(), Known::from_change(change)?);
                }
            }
            drop(known);
            for agent_id in destroyed {
                lock(self.shard(agent_id)).remove(agent_id);
            }
            if done {
                break;
            }
        }
        self.known_through.fetch_max(after, Ordering::Relaxed);
        Ok(())
    }

    /// Flags the running Agents this replica judges that have been silent too long.
    pub async fn judge(&self, app: &App) -> Result<usize, StoreError> {
        let now = app.clock.now().as_millis();
        let limit = millis(self.settings.silence_limit());
        if now < self.started_at + limit {
            return Ok(0); // just started: give every Agent a chance to report in
        }
        let silent_since = now - limit;
        let mut silent = Vec::new();
        {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            for shard in &*self.shards {
                for (agent_id, live) in lock(shard).iter() {
                    let running = known.get(agent_id).is_some_and(|k| {
                        k.state == PeriodState::Running && k.operation.is_none() && !k.destroyed
                    });
                    if running
                        && !live.unhealthy
                        && live.written_at.is_some()
                        && live.last_seen < silent_since
                    {
                        silent.push((agent_id.clone(), live.last_seen));
                    }
                }
            }
        }
        let mut flagged = 0;
        for (agent_id, last_seen) in silent {
            let mut tx = app.store.write().await?;
            let marked = tx
                .mark_unhealthy(&agent_id, &self.replica_id, silent_since, now)
                .await?;
            tx.commit().await?;
            let mut shard = lock(self.shard(&agent_id));
            if marked {
                flagged += 1;
                if let Some(live) = shard.get_mut(&agent_id) {
                    live.unhealthy = true;
                }
                drop(shard);
                info!(
                    agent_id,
                    silent_s = (now - last_seen) / 1_000,
                    "agent unhealthy: no heartbeat for {} intervals",
                    self.settings.unhealthy_after
                );
            } else {
                // Another replica judges it now, or heard from it since.
                shard.remove(&agent_id);
            }
        }
        Ok(flagged)
    }

    /// Announces this replica and, holding the lease, judges the Agents of replicas that went
    /// silent (after a grace period for those Agents to report to another replica).
    pub async fn judge_orphans(&self, app: &App) -> Result<usize, StoreError> {
        let now = app.clock.now().as_millis();
        let timeout = millis(self.settings.replica_timeout);
        let mut tx = app.store.write().await?;
        tx.announce_replica(&self.replica_id, self.started_at, now)
            .await?;
        let leader = tx
            .acquire_lease("judge-orphans", &self.replica_id, now, now + 2 * timeout)
            .await?;
        tx.commit().await?;
        if !leader {
            return Ok(0);
        }
        let limit = millis(self.settings.silence_limit());
        let gone = app
            .store
            .read()
            .await?
            .silent_replicas(now - timeout)
            .await?;
        let mut flagged = 0;
        for (replica, seen_at) in gone {
            if now < seen_at + timeout + limit {
                continue; // its Agents may still be finding another replica
            }
            let silent = app
                .store
                .read()
                .await?
                .silent_agents(&replica, now - limit)
                .await?;
            if silent.is_empty() && now - seen_at > millis(Duration::from_hours(24)) {
                let mut tx = app.store.write().await?;
                tx.forget_replica(&replica).await?;
                tx.commit().await?;
                continue;
            }
            for (agent_id, account_id, last_seen) in silent {
                let mut tx = app.store.write().await?;
                let marked = tx
                    .mark_unhealthy(&agent_id, &replica, now - limit, now)
                    .await?;
                tx.commit().await?;
                if marked {
                    flagged += 1;
                    warn!(
                        agent_id,
                        account_id,
                        silent_s = (now - last_seen) / 1_000,
                        gone_replica = %replica,
                        "agent unhealthy: silent since its replica went away"
                    );
                }
            }
        }
        Ok(flagged)
    }
}
