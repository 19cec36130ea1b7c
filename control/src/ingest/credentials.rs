//! Bootstrap tokens and credentials: a VM's single-use bootstrap token is traded once for
//! the Agent's long-lived credential; heartbeats authenticate with the credential, cached
//! for `credential_ttl` so revocations reach every replica within it. Tokens are random,
//! stored hashed, compared in constant time, and never logged.

use std::sync::atomic::Ordering;

use control_api::agent::{RegisterRequest, RegisterResponse};
use subtle::ConstantTimeEq;
use tracing::info;

use super::{BOOTSTRAP_PREFIX, CREDENTIAL_PREFIX, CachedCredential, Ingest, IngestError, sha256};
use crate::clock::millis;
use crate::ids::{new_id, prefix};
use crate::store::{CredentialRow, StoreError};
use crate::sync;

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
        tx.revoke_agent_credentials(&request.agent_id, now).await?;
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
        let ttl = millis(self.settings.credential_ttl);
        let cached = sync::read(&self.credentials)
            .get(id)
            .filter(|c| now - c.fetched_at < ttl)
            .cloned();
        let credential = match cached {
            Some(credential) => credential,
            None => self
                .load_credential(id, now)
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
        id: &str,
        now: i64,
    ) -> Result<Option<CachedCredential>, IngestError> {
        let Some(row) = self.store.read().await?.credential(id).await? else {
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
        sync::write(&self.credentials).insert(id.to_owned(), credential.clone());
        Ok(Some(credential))
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
