//! Bootstrap tokens and credentials: a VM's single-use bootstrap token is traded once for
//! the Agent's long-lived credential; heartbeats authenticate with the credential, cached
//! for `credential_ttl` so revocations reach every replica within it. Tokens are random,
//! stored hashed, compared in constant time, and never logged.
//!
//! The cache is filled in pages (all credentials in force, with their Agents' records) when
//! the replica starts, and refilled every half `credential_ttl`, so a restart costs a few
//! bulk reads instead of one read per Agent, and a copy is refreshed before it is too old to
//! trust. A load must never make a revoked credential good again: a page never replaces a
//! copy read after it, and what a whole load did not find in force is forgotten.

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::time::Duration;

use control_api::agent::{RegisterRequest, RegisterResponse};
use control_api::agents::{AgentOperation, PeriodState};
use subtle::ConstantTimeEq;
use tracing::{error, info};

use super::records::Known;
use super::{BOOTSTRAP_PREFIX, CREDENTIAL_PREFIX, CachedCredential, Ingest, IngestError, sha256};
use crate::clock::millis;
use crate::ids::{new_id, prefix};
use crate::store::{CredentialRow, DbText as _, LiveCredentialRow, StoreError};
use crate::sync;

/// Credentials read per page of a load.
const LOAD_PAGE: i64 = 5_000;
/// How long a heartbeat missing the cache waits for a load under way before reading alone.
const LOAD_WAIT: Duration = Duration::from_secs(10);

/// What a load did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Credentials in force found.
    pub credentials: usize,
    /// Cached copies forgotten: revoked, or their Agent destroyed, since the last load.
    pub forgotten: usize,
}

/// A new bootstrap token for an Agent: the text for its VM and the hash to store.
pub fn new_bootstrap_token() -> Result<(String, String), crate::auth::RandomError> {
    let token = format!("{BOOTSTRAP_PREFIX}{}", crate::auth::random_secret()?);
    let hash = hex::encode(sha256(&token));
    Ok((token, hash))
}

impl Ingest {
    /// Trades a bootstrap token for a credential, once.
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, IngestError> {
        const REFUSED: &str = "bootstrap token refused: unknown, already used or expired";
        if !crate::ids::looks_like(prefix::AGENT, &request.agent_id) {
            return Err(IngestError::Unauthorized(REFUSED));
        }
        let now = self.clock.now().as_millis();
        let mut tx = self.store.write().await?;
        let Some(bootstrap) = tx.bootstrap(&request.agent_id).await? else {
            return Err(IngestError::Unauthorized(REFUSED));
        };
        let offered = hex::encode(sha256(request.bootstrap_token.trim()));
        let is = |hash: &str| -> bool { offered.as_bytes().ct_eq(hash.as_bytes()).into() };
        // Both compared whatever the first gives, so the time taken tells nothing.
        let current = is(&bootstrap.token_hash);
        let previous = bootstrap.previous_token_hash.as_deref().is_some_and(is);
        let matches = current | previous;
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
        // One credential per Agent: a VM registering again (after an operator's re-bootstrap)
        // ends whatever the lost one could still do.
        let revoked = tx.revoke_agent_credentials(&request.agent_id, now).await?;
        tx.insert_credential(&credential, now).await?;
        tx.commit().await?;
        // Refused here at once (other replicas stop trusting it at their next load).
        let mut cache = sync::write(&self.credentials);
        for id in revoked {
            cache.insert(
                id,
                CachedCredential {
                    agent_id: request.agent_id.clone(),
                    secret_hash: [0; 32],
                    revoked: true,
                    fetched_at: now,
                    load: 0,
                },
            );
        }
        drop(cache);
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
    async fn authenticate(&self, bearer: &str, now: i64) -> Result<String, IngestError> {
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
        let credential = match self.cached(id, now) {
            Some(credential) => credential,
            None => match self.after_load(id).await {
                Some(credential) => credential,
                None => self
                    .read_credential(id)
                    .await?
                    .ok_or(IngestError::Unauthorized(REFUSED))?,
            },
        };
        let matches: bool = sha256(secret).ct_eq(&credential.secret_hash).into();
        if !matches || credential.revoked {
            return Err(IngestError::Unauthorized(REFUSED));
        }
        Ok(credential.agent_id)
    }

    /// The cached copy of a credential, if it is young enough to trust.
    fn cached(&self, id: &str, now: i64) -> Option<CachedCredential> {
        let ttl = millis(self.settings.credential_ttl);
        sync::read(&self.credentials)
            .get(id)
            .filter(|c| now - c.fetched_at < ttl)
            .cloned()
    }

    /// While the first load is under way, waits for the page that holds the credential (up to
    /// `LOAD_WAIT` for the whole load): during the storm of first heartbeats after a start, a
    /// heartbeat goes on as soon as its page is cached, not when the last page is, and one bulk
    /// read serves them all.
    async fn after_load(&self, id: &str) -> Option<CachedCredential> {
        let mut loading = self.loading.subscribe();
        let deadline = tokio::time::Instant::now() + LOAD_WAIT;
        loop {
            // Seen before looking: a page cached after the look is a change to wait for.
            let under_way = *loading.borrow_and_update() > 0;
            if let Some(credential) = self.cached(id, self.clock.now().as_millis()) {
                return Some(credential);
            }
            if !under_way {
                return None;
            }
            match tokio::time::timeout_at(deadline, loading.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Reads a credential alone and caches it; `None` if there is no such credential.
    async fn read_credential(&self, id: &str) -> Result<Option<CachedCredential>, IngestError> {
        let read_at = self.clock.now().as_millis();
        self.stats.credential_reads.fetch_add(1, Ordering::Relaxed);
        let Some(row) = self.store.read().await?.credential(id).await? else {
            return Ok(None);
        };
        let credential = CachedCredential {
            agent_id: row.agent_id,
            secret_hash: decode_hash(id, &row.secret_hash)?,
            revoked: row.revoked_at.is_some(),
            fetched_at: read_at,
            load: 0,
        };
        sync::write(&self.credentials).insert(id.to_owned(), credential.clone());
        Ok(Some(credential))
    }

    /// Loads every credential in force, with its Agent's record, in pages: at start, before
    /// this replica follows lifecycle changes (which keep those records fresh from then on).
    /// Heartbeats that miss the cache meanwhile wait for it.
    pub async fn preload_credentials(&self) -> Result<Loaded, StoreError> {
        self.load_credentials(true).await
    }

    /// Loads every credential in force again, in pages, and forgets the cached copies the
    /// load did not find in force (revoked, or their Agent destroyed). Every half
    /// `credential_ttl`, so no copy gets too old to trust while the database answers.
    pub async fn reload_credentials(&self) -> Result<Loaded, StoreError> {
        self.load_credentials(false).await
    }

    async fn load_credentials(&self, with_records: bool) -> Result<Loaded, StoreError> {
        let load = self.loads.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.clock.now().as_millis();
        // Only the first load makes misses wait: afterwards a miss is a credential made since.
        let loading = with_records.then(|| Loading::start(&self.loading));
        let mut after = String::new();
        let mut credentials = 0;
        loop {
            let read_at = self.clock.now().as_millis();
            let rows = self
                .store
                .read()
                .await?
                .live_credentials_after(&after, LOAD_PAGE)
                .await?;
            let last = usize::try_from(LOAD_PAGE).is_ok_and(|page| rows.len() < page);
            if let Some(row) = rows.last() {
                after.clone_from(&row.id);
            }
            credentials += rows.len();
            self.load_page(rows, load, read_at, with_records);
            if let Some(loading) = &loading {
                loading.page_cached();
            }
            if last {
                break;
            }
        }
        // Not in force any more, unless read alone (or revoked here) after the load began.
        let mut cache = sync::write(&self.credentials);
        let before = cache.len();
        cache.retain(|_, c| c.load == load || c.fetched_at > started);
        let forgotten = before - cache.len();
        Ok(Loaded {
            credentials,
            forgotten,
        })
    }

    /// Caches one page of a load, read at `read_at`; never over a copy read later.
    fn load_page(&self, rows: Vec<LiveCredentialRow>, load: u64, read_at: i64, with_records: bool) {
        let mut records = Vec::with_capacity(if with_records { rows.len() } else { 0 });
        let mut page = Vec::with_capacity(rows.len());
        for row in rows {
            let secret_hash = match decode_hash(&row.id, &row.secret_hash) {
                Ok(hash) => hash,
                Err(e) => {
                    // Left out: read alone on its first use, which reports it then.
                    error!(error = %e, "a credential was left out of the load");
                    continue;
                }
            };
            if with_records {
                match known(&row) {
                    Ok(known) => records.push((row.agent_id.clone(), known)),
                    Err(e) => error!(error = %e, "an Agent's record was left out of the load"),
                }
            }
            let credential = CachedCredential {
                agent_id: row.agent_id,
                secret_hash,
                revoked: false,
                fetched_at: read_at,
                load,
            };
            page.push((row.id, credential));
        }
        // The records first: a heartbeat that finds its credential finds its record too.
        self.records.preload(records);
        let mut cache = sync::write(&self.credentials);
        for (id, credential) in page {
            match cache.entry(id) {
                // Read since (or in the same millisecond): what it says stands, and if it says
                // in force this load found it so too.
                Entry::Occupied(mut held) if held.get().fetched_at >= read_at => {
                    if !held.get().revoked {
                        held.get_mut().load = load;
                    }
                }
                Entry::Occupied(mut held) => {
                    held.insert(credential);
                }
                Entry::Vacant(slot) => {
                    slot.insert(credential);
                }
            }
        }
    }

    /// How many credentials this replica holds (in force, or refused lately).
    pub fn credentials_cached(&self) -> usize {
        sync::read(&self.credentials).len()
    }

    /// The Agent a heartbeat's bearer credential stands for; checked before its body is read.
    pub async fn authenticate_heartbeat(&self, bearer: &str) -> Result<String, IngestError> {
        let now = self.clock.now().as_millis();
        // A refusal counts; a database that does not answer is not the agent's doing.
        self.authenticate(bearer, now).await.inspect_err(|error| {
            if matches!(
                error,
                IngestError::Unauthorized(_) | IngestError::Forbidden(_)
            ) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
        })
    }
}

/// Marks the first load under way for as long as it lives, however the load ends: the watched
/// value counts the pages cached so far, plus one (0 when no load is under way), so that each
/// page wakes the heartbeats waiting for it.
struct Loading<'a>(&'a tokio::sync::watch::Sender<u64>);

impl<'a> Loading<'a> {
    fn start(loading: &'a tokio::sync::watch::Sender<u64>) -> Self {
        loading.send_replace(1);
        Self(loading)
    }

    fn page_cached(&self) {
        self.0.send_modify(|pages| *pages += 1);
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        self.0.send_replace(0);
    }
}

fn decode_hash(id: &str, hex_hash: &str) -> Result<[u8; 32], StoreError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut hash)
        .map_err(|_| StoreError::Corrupt(format!("credential {id} has a malformed hash")))?;
    Ok(hash)
}

/// The Agent's record as a load found it beside its credential.
fn known(row: &LiveCredentialRow) -> Result<Known, StoreError> {
    Ok(Known {
        account_id: row.account_id.clone(),
        state: PeriodState::from_db(&row.state)?,
        operation: row
            .operation
            .as_deref()
            .map(AgentOperation::from_db)
            .transpose()?,
        destroyed: false,
    })
}
