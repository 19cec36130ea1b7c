//! Plain VMs: a dedicated server with public IPv4 and IPv6, its own firewall passing only the
//! inbound rules listed (TCP/22 by default), and a one-shot cloud-init — and no agent of ours,
//! ever (DESIGN.md, "Plain VMs"). The platform is present only while provisioning and during
//! lifecycle changes.
//!
//! Like Agents, a request is accepted in one transaction (the VM's row, its ledger, its audit
//! event where it has one, a durable job, the idempotent answer) and the provider is called by
//! the job (`crate::jobs`). What differs: provisioning is a timestamp on the VM, not an audit
//! event (destroy and transfer are events); stopped time bills like running time; the firewall
//! is edited directly at the provider ([`firewall`]), keeping no history; and the one-time
//! password is handed from the request to the job in this replica's memory only
//! ([`Passwords`]), so neither it nor its hash is ever stored.
//!
//! Every change locks the VM's row first, then touches periods, then appends to the audit
//! chain: the lock order everywhere.
//!
//! May call: the store, the ledger, the audit chain, idempotency, and the providers for the
//! firewall and the request-time preflight.

pub mod firewall;
mod operate;
mod passwords;
mod provision;
mod transfer;

use control_api::Timestamp;
use control_api::agents::{AgentOperation, PeriodState};
use control_api::plain_vms::{PlainVm, PlainVmKey, PlainVmList, PlainVmState};
use control_api::usage::ResourceKind;
use serde::{Deserialize, Serialize};

use crate::app::{App, Caller};
use crate::error::{Error, Result};
use crate::ids::{new_id, prefix};
use crate::ledger::ResourceRef;
use crate::store::{PlainVmRow, StoreError, Tx};

pub use operate::request;
pub use passwords::Passwords;
pub use provision::provision;
pub use transfer::transfer;

/// Largest page of Plain VMs one listing returns.
pub const MAX_PAGE: i64 = 200;

/// Most Vault keys one Plain VM is given.
pub const MAX_KEYS: usize = 20;

/// A Vault key as a Plain VM received it (stored on its row): the public key line is kept so
/// a provisioning resumed after the key left the Vault still delivers what was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenKey {
    pub vault_key_id: String,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
}

/// The keys stored on a row.
pub fn given_keys(row: &PlainVmRow) -> Result<Vec<GivenKey>, StoreError> {
    serde_json::from_str(&row.ssh_keys)
        .map_err(|e| StoreError::Corrupt(format!("plain VM {} ssh_keys: {e}", row.id)))
}

/// Whether `value` may name a provider's server type, location, image or user: 1 to 63 of
/// `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn is_provider_name(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// The wire form of a stored Plain VM (never with a password: only the provisioning answer
/// carries one).
pub fn to_api(row: PlainVmRow) -> Result<PlainVm, StoreError> {
    let ssh_keys = given_keys(&row)?
        .into_iter()
        .map(|key| PlainVmKey {
            vault_key_id: key.vault_key_id,
            name: key.name,
            fingerprint: key.fingerprint,
        })
        .collect();
    let state = match (row.destroyed_at, row.state) {
        (Some(_), _) => PlainVmState::Destroyed,
        (None, PeriodState::Running) => PlainVmState::Running,
        (None, PeriodState::Paused) => PlainVmState::Stopped,
    };
    Ok(PlainVm {
        id: row.id,
        account_id: row.account_id,
        name: row.name,
        hostname: row.hostname,
        provider: row.provider,
        server_type: row.server_type,
        location: row.location,
        image: row.image,
        default_user: row.default_user,
        state,
        operation: row.operation,
        last_error: row.last_error,
        ipv4: row.ipv4,
        ipv6: row.ipv6,
        ssh_keys,
        one_time_password_set: row.one_time_password,
        one_time_password: None,
        provisioned_at: Timestamp::from_millis(row.provisioned_at),
        destroyed_at: row.destroyed_at.map(Timestamp::from_millis),
    })
}

/// The Plain VM if it exists and the caller may see it; otherwise 404, the same either way.
pub(crate) async fn visible(tx: &mut Tx, caller: &Caller, id: &str) -> Result<PlainVmRow> {
    if !crate::ids::looks_like(prefix::PLAIN_VM, id) {
        return Err(Error::not_found("plain VM", id.escape_debug().to_string()));
    }
    match tx.plain_vm(id).await? {
        Some(vm) if caller.principal.can_see(&vm.account_id) => Ok(vm),
        _ => Err(Error::not_found("plain VM", id)),
    }
}

pub(crate) async fn reread(tx: &mut Tx, id: &str) -> Result<PlainVm> {
    let row = tx.plain_vm(id).await?.ok_or_else(|| {
        StoreError::Corrupt(format!("plain VM {id} vanished in its own transaction"))
    })?;
    Ok(to_api(row)?)
}

pub async fn get(app: &App, caller: &Caller, id: &str) -> Result<PlainVm> {
    let mut tx = app.store.read().await?;
    Ok(to_api(visible(&mut tx, caller, id).await?)?)
}

pub async fn list(
    app: &App,
    caller: &Caller,
    cursor: Option<&str>,
    limit: i64,
    include_destroyed: bool,
) -> Result<PlainVmList> {
    let limit = limit.clamp(1, MAX_PAGE);
    if cursor.is_some_and(|c| !crate::ids::looks_like(prefix::PLAIN_VM, c)) {
        return Err(Error::invalid(
            "cursor",
            "is not a cursor this API returned",
        ));
    }
    let mut tx = app.store.read().await?;
    let rows = tx
        .plain_vms(
            caller.principal.account_scope(),
            cursor,
            include_destroyed,
            limit + 1,
        )
        .await?;
    let (rows, next_cursor) = crate::paging::one_page(rows, limit, |row| row.id.clone());
    let items = rows.into_iter().map(to_api).collect::<Result<_, _>>()?;
    Ok(PlainVmList { items, next_cursor })
}

/// Records that the provider shows the VM `to` while it is recorded `from` (the reconciler),
/// from `at` on, if its compare-and-set still holds; returns its account, or `None` having
/// changed nothing. The caller commits `tx`.
pub async fn record_observed(
    tx: &mut Tx,
    id: &str,
    from: PeriodState,
    to: PeriodState,
    at: Timestamp,
) -> Result<Option<String>, StoreError> {
    if !tx
        .observe_plain_vm_state(id, from, to, at.as_millis())
        .await?
    {
        return Ok(None);
    }
    let owner = tx
        .plain_vm(id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("plain VM {id} vanished under its lock")))?
        .account_id;
    crate::ledger::switch(tx, ResourceRef::plain_vm(id), &owner, to, at).await?;
    Ok(Some(owner))
}

async fn queue_job(
    tx: &mut Tx,
    operation: AgentOperation,
    id: &str,
    caller: &Caller,
    now: Timestamp,
) -> Result<()> {
    tx.enqueue_job(
        &new_id(prefix::JOB),
        operation,
        ResourceKind::PlainVm,
        id,
        Some(&caller.request_id),
        now.as_millis(),
    )
    .await?;
    Ok(())
}
