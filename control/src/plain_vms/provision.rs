//! `POST /api/plain-vms`: a new Plain VM, stopped until its server is seen running; the
//! provisioning job makes its firewall, then its server with that firewall and its first-boot
//! document. Provisioning is a timestamp on the VM (`provisioned_at`), not an audit event.

use control_api::agents::{AgentOperation, PeriodState};
use control_api::plain_vms::{PlainVm, ProvisionPlainVm};
use tracing::info;

use super::{GivenKey, MAX_KEYS, is_provider_name, queue_job, reread};
use crate::agents::ACCEPTED;
use crate::app::{App, Caller};
use crate::cloud_init::one_time_password;
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::ledger::{self, ResourceRef};
use crate::providers::{Cloud, Placement, Secret};
use crate::store::{PlainVmRow, Tx};
use crate::validate::Checks;

/// A request with its defaults filled in, checked.
struct Wanted<'a> {
    account_id: &'a str,
    hostname: &'a str,
    server_type: &'a str,
    location: &'a str,
    image: &'a str,
}

/// Checks every field at once and fills in the defaults.
fn check<'a>(
    app: &'a App,
    caller: &'a Caller,
    request: &'a ProvisionPlainVm,
) -> Result<Wanted<'a>> {
    let defaults = &app.settings.plain_vms;
    let mut checks = Checks::new();
    checks.dns_label("name", &request.name);
    let hostname = request.hostname.as_deref().unwrap_or(&request.name);
    if request.hostname.is_some() {
        checks.hostname("hostname", hostname);
    }
    let mut pick = |field: &str, given: Option<&'a str>, default: &'a str| match given {
        Some(value) => {
            checks.ensure(is_provider_name(value), field, || {
                "must be 1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
                    .to_owned()
            });
            value
        }
        None => default,
    };
    let server_type = pick(
        "server_type",
        request.server_type.as_deref(),
        &defaults.server_type,
    );
    let location = pick("location", request.location.as_deref(), &defaults.location);
    let image = pick("image", request.image.as_deref(), &defaults.image);
    let keys = &request.vault_key_ids;
    if keys.len() > MAX_KEYS {
        checks.fail(
            "vault_key_ids",
            format!(
                "holds {} keys; a Plain VM takes at most {MAX_KEYS}",
                keys.len()
            ),
        );
    }
    for (i, id) in keys.iter().enumerate() {
        if !crate::ids::looks_like(prefix::VAULT_KEY, id) {
            checks.fail(
                format!("vault_key_ids[{i}]"),
                format!("{} is not a Vault key id", id.escape_debug()),
            );
        } else if keys[..i].contains(id) {
            checks.fail(format!("vault_key_ids[{i}]"), format!("names {id} twice"));
        }
    }
    if keys.is_empty() && !request.one_time_password {
        checks.fail(
            "vault_key_ids",
            "is empty and no one_time_password was asked for: nobody could log in to the VM \
             (the platform keeps no way in); give a Vault key or ask for a one-time password",
        );
    }
    let account_id = caller
        .target_account(request.account_id.as_deref())
        .unwrap_or_else(|complaint| {
            checks.fail("account_id", complaint);
            ""
        });
    checks.finish()?;
    Ok(Wanted {
        account_id,
        hostname,
        server_type,
        location,
        image,
    })
}

/// The chosen keys as the account's Vault holds them now; each missing one is named.
async fn chosen_keys(tx: &mut Tx, account_id: &str, ids: &[String]) -> Result<Vec<GivenKey>> {
    let mut checks = Checks::new();
    let mut keys = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        match tx.vault_key(id, Some(account_id)).await? {
            Some(key) => keys.push(GivenKey {
                vault_key_id: key.id,
                name: key.name,
                fingerprint: key.fingerprint,
                public_key: key.public_key,
            }),
            None => checks.fail(
                format!("vault_key_ids[{i}]"),
                format!("account {account_id} has no Vault key {id}"),
            ),
        }
    }
    checks.finish()?;
    Ok(keys)
}

/// Asks the provider, before anything is recorded, whether it can make this server, so a
/// refusal (a server type, location or image it does not have) or a failing provider reaches
/// the caller, not a job. A refused default is the configuration's fault, not the caller's.
async fn preflight(cloud: &Cloud, request: &ProvisionPlainVm, wanted: &Wanted<'_>) -> Result<()> {
    let placement = Placement {
        image: wanted.image,
        server_type: Some(wanted.server_type),
        location: Some(wanted.location),
    };
    cloud.servers.preflight(&placement).await.map_err(|e| {
        let given = match e.field {
            Some("server_type") => request.server_type.is_some(),
            Some("location") => request.location.is_some(),
            Some("image") => request.image.is_some(),
            _ => true,
        };
        let e = if given {
            e
        } else {
            let field = e.field.unwrap_or_default();
            e.not_the_callers(&format!("configured as [plain_vms] {field}"))
        };
        Error::provider(cloud.name, &e)
    })
}

pub async fn provision(
    app: &App,
    caller: &Caller,
    request: &ProvisionPlainVm,
    idem: Option<&IdempotencyKey>,
) -> Result<PlainVm> {
    let wanted = check(app, caller, request)?;
    let account_id = wanted.account_id;
    if !crate::ids::looks_like(prefix::ACCOUNT, account_id) {
        return Err(Error::invalid(
            "account_id",
            format!("no account {}", account_id.escape_debug()),
        ));
    }
    let cloud = app.providers.default_cloud();
    if cloud.firewalls.is_none() {
        return Err(Error::Conflict(format!(
            "provider {} has no firewalls, and a Plain VM is never made without its own",
            cloud.name
        )));
    }
    preflight(cloud, request, &wanted).await?;
    let password = if request.one_time_password {
        Some(one_time_password().map_err(|e| Error::Internal(e.to_string()))?)
    } else {
        None
    };

    let mut tx = app.store.write().await?;
    let now = app.clock.now();
    if tx.account(account_id).await?.is_none() {
        return Err(Error::invalid(
            "account_id",
            format!("no account {account_id}"),
        ));
    }
    let keys = chosen_keys(&mut tx, account_id, &request.vault_key_ids).await?;
    let id = new_id(prefix::PLAIN_VM);
    tx.insert_plain_vm(&PlainVmRow {
        id: id.clone(),
        account_id: account_id.to_owned(),
        name: request.name.clone(),
        hostname: wanted.hostname.to_owned(),
        provider: cloud.name.to_owned(),
        server_type: wanted.server_type.to_owned(),
        location: wanted.location.to_owned(),
        image: wanted.image.to_owned(),
        default_user: app.settings.plain_vms.default_user.clone(),
        ssh_keys: serde_json::to_string(&keys).map_err(|e| Error::Internal(e.to_string()))?,
        one_time_password: password.is_some(),
        password_replica: password.as_ref().map(|_| app.replica_id.clone()),
        server_id: None,
        firewall_id: None,
        ipv4: None,
        ipv6: None,
        state: PeriodState::Paused,
        operation: Some(AgentOperation::Provision),
        last_error: None,
        provisioned_at: now.as_millis(),
        destroyed_at: None,
        updated_at: now.as_millis(),
    })
    .await?;
    // Stopped until the server is seen running; billed from now either way.
    ledger::open(
        &mut tx,
        ResourceRef::plain_vm(&id),
        account_id,
        PeriodState::Paused,
        now,
    )
    .await?;
    queue_job(&mut tx, AgentOperation::Provision, &id, caller, now).await?;
    let mut answer = reread(&mut tx, &id).await?;
    // A retry's replayed answer says the password was set, never what it is.
    idempotency::record(&mut tx, idem, ACCEPTED, &answer).await?;
    if let Some((_, hash)) = &password {
        // Before the commit makes the job visible to this replica's runner.
        app.passwords.keep(&id, Secret(hash.clone()));
    }
    if let Err(e) = tx.commit().await {
        app.passwords.forget(&id);
        return Err(e.into());
    }
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %account_id,
        plain_vm_id = %id,
        provider = %cloud.name,
        server_type = %wanted.server_type,
        location = %wanted.location,
        image = %wanted.image,
        keys = keys.len(),
        one_time_password = password.is_some(),
        "plain VM provisioning accepted"
    );
    answer.one_time_password = password.map(|(plain, _)| plain.0);
    Ok(answer)
}
