//! `POST /api/agents/import` (operators): an Agent of the legacy cohort that already runs on Fly
//! is taken under management as it is. Unlike every other request of this service, this one
//! reads the provider before it records anything: nothing is recorded unless Fly confirms the
//! machine (and its volume) exist, and its state is the Agent's first state. The machine is
//! labelled (metadata `control_kind`, `control_id`) so the reconciler and the sweeper see it as
//! any Agent's server; then one transaction records the Agent (provider `fly`, provider id
//! `<app>/<machine>`), opens its ledger period now and appends a provision event marked
//! `adopted`. From then on start, stop and destroy are the ordinary jobs, through the Fly cloud.

use control_api::agents::{Agent, ImportAgent, PeriodState};
use control_api::audit::AuditAction;
use control_api::usage::ResourceKind;
use tracing::info;

use super::reread;
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::ledger::{self, ResourceRef};
use crate::providers::fly::{self, Fly};
use crate::providers::{ErrorKind, ProviderError, resource_labels};
use crate::store::{DbText, NewAgent};
use crate::validate::Checks;

/// The answer of a successful import.
const CREATED: u16 = 201;

/// Whether `image` is a reference by digest: `repository@sha256:` and 64 lowercase hex digits.
fn by_digest(image: &str) -> bool {
    let Some((repository, digest)) = image.split_once("@sha256:") else {
        return false;
    };
    !repository.is_empty()
        && !repository.contains(char::is_whitespace)
        && !repository.contains('@')
        && digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Fly's identifiers: letters, digits, `-` and `_`, at most 63.
fn fly_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn check(request: &ImportAgent) -> Result<()> {
    let mut checks = Checks::new();
    checks.dns_label("name", &request.name);
    if !crate::ids::looks_like(prefix::ACCOUNT, &request.account_id) {
        checks.fail(
            "account_id",
            format!("no account {}", request.account_id.escape_debug()),
        );
    }
    for (field, value) in [
        ("app", &request.app),
        ("machine_id", &request.machine_id),
        ("volume_id", &request.volume_id),
    ] {
        if !fly_id(value) {
            checks.fail(
                field,
                "must be a Fly identifier: letters, digits, '-' and '_', at most 63",
            );
        }
    }
    if !by_digest(&request.image) {
        checks.fail(
            "image",
            "must be a reference by digest: repository@sha256:<64 lowercase hex digits>",
        );
    }
    checks.finish()
}

/// A Fly failure as the operator is shown it: a refusal (502), or a failing Fly (503, with
/// `Retry-After`).
fn fly_error(what: &str, e: &ProviderError) -> Error {
    let e = ProviderError {
        message: format!("{what}: {}", e.message),
        ..e.clone()
    };
    Error::provider("fly", &e)
}

/// What Fly says of the machine and its volume: the Agent's state, or why it cannot be
/// imported.
async fn confirm(fly: &Fly, request: &ImportAgent) -> Result<PeriodState> {
    let (app, machine_id) = (&request.app, &request.machine_id);
    let machine = match fly.machine(app, machine_id).await {
        Ok(Some(m)) if m.state != "destroyed" && m.state != "destroying" => m,
        Ok(_) => {
            return Err(Error::invalid(
                "machine_id",
                format!("fly has no machine {machine_id} in app {app}"),
            ));
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Err(Error::invalid(
                "machine_id",
                format!("fly has no machine {machine_id} in app {app}"),
            ));
        }
        Err(e) => return Err(fly_error(&format!("machine {app}/{machine_id}"), &e)),
    };
    let volume = match fly.volume(app, &request.volume_id).await {
        Ok(found) => found,
        Err(e) if e.kind == ErrorKind::NotFound => None,
        Err(e) => return Err(fly_error(&format!("volume {}", request.volume_id), &e)),
    };
    let mounted = machine
        .config
        .mounts
        .iter()
        .flatten()
        .any(|m| m.volume == request.volume_id);
    let attached = volume
        .as_ref()
        .is_some_and(|v| v.attached_machine_id.as_deref() == Some(machine_id.as_str()) || mounted);
    if !attached {
        return Err(Error::invalid(
            "volume_id",
            format!(
                "fly has no volume {} of app {app} mounted by machine {machine_id}",
                request.volume_id
            ),
        ));
    }
    Ok(match fly::status(&machine.state) {
        s if s.is_on() => PeriodState::Running,
        _ => PeriodState::Paused,
    })
}

/// Checks that the account exists and the machine is no live Agent's yet; returns the current
/// release's id, which the Agent is recorded against.
async fn unrecorded(app: &App, request: &ImportAgent, provider_id: &str) -> Result<String> {
    let mut tx = app.store.write().await?;
    if tx.account(&request.account_id).await?.is_none() {
        return Err(Error::invalid(
            "account_id",
            format!("no account {}", request.account_id),
        ));
    }
    if let Some(existing) = tx.live_agent_at(fly::NAME, provider_id).await? {
        return Err(Error::Conflict(format!(
            "fly machine {provider_id} is agent {existing} already"
        )));
    }
    let image = tx.current_image().await?.ok_or_else(|| {
        Error::Conflict(
            "no image release is current: an imported Agent is recorded against it".to_owned(),
        )
    })?;
    Ok(image.id)
}

/// Imports a legacy Fly Agent. Operators only; nothing is recorded unless Fly confirms it.
pub async fn import(
    app: &App,
    caller: &Caller,
    request: &ImportAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    if !caller.principal.is_operator() {
        return Err(Error::Forbidden(
            "importing an agent requires an operator token".to_owned(),
        ));
    }
    check(request)?;
    let fly = app.providers.fly().ok_or_else(|| {
        Error::Conflict("fly is not configured on this control plane ([fly])".to_owned())
    })?;
    let provider_id = fly::server_id(&request.app, &request.machine_id);
    let image_id = unrecorded(app, request, &provider_id).await?;
    let state = confirm(fly, request).await?;
    let agent_id = new_id(prefix::AGENT);
    fly.label(
        &request.app,
        &request.machine_id,
        &resource_labels(ResourceKind::Agent, &agent_id),
    )
    .await
    .map_err(|e| fly_error(&format!("labels on machine {provider_id}"), &e))?;
    let now = app.clock.now();
    let mut tx = app.store.write().await?;
    if let Some(existing) = tx.live_agent_at(fly::NAME, &provider_id).await? {
        return Err(Error::Conflict(format!(
            "fly machine {provider_id} is agent {existing} already"
        )));
    }
    tx.insert_imported_agent(
        &NewAgent {
            id: &agent_id,
            account_id: &request.account_id,
            name: &request.name,
            provider: fly::NAME,
            image_id: &image_id,
            image_ref: &request.image,
            env: "{}",
            provisioned_at: now.as_millis(),
            cloned_from: None,
        },
        &provider_id,
        state,
    )
    .await?;
    ledger::open(
        &mut tx,
        ResourceRef::agent(&agent_id),
        &request.account_id,
        state,
        now,
    )
    .await?;
    audit::append(
        &mut tx,
        NewEvent {
            details: serde_json::json!({
                "adopted": true,
                "name": request.name,
                "provider": fly::NAME,
                "provider_id": provider_id,
                "volume_id": request.volume_id,
                "image": request.image,
                "state": state,
            }),
            ..NewEvent::by(
                caller,
                now,
                AuditAction::AgentProvision,
                ResourceRef::agent(&agent_id),
                &request.account_id,
            )
        },
    )
    .await?;
    let agent = reread(&mut tx, &agent_id).await?;
    idempotency::record(&mut tx, idem, CREATED, &agent).await?;
    tx.commit().await?;
    info!(
        request_id = %caller.request_id,
        account_id = %request.account_id,
        agent_id = %agent_id,
        provider_id = %provider_id,
        state = state.as_db(),
        "legacy fly agent imported"
    );
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::by_digest;

    #[test]
    fn only_references_by_digest_are_images() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(by_digest(&format!("registry.fly.io/agent@sha256:{hex}")));
        assert!(!by_digest("registry.fly.io/agent:latest"));
        assert!(!by_digest(&format!(
            "registry.fly.io/agent@sha256:{}",
            &hex[1..]
        )));
        assert!(!by_digest(&format!("@sha256:{hex}")));
        assert!(!by_digest(&format!("a@sha256:{}", hex.to_uppercase())));
    }
}
