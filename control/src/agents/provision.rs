//! `POST /api/agents`: a new Agent on the current image release, paused until its VM is seen
//! running; the provisioning job does the provider work.

use std::collections::BTreeMap;

use control_api::agents::{Agent, AgentOperation, PeriodState, ProvisionAgent};
use control_api::audit::AuditAction;
use tracing::info;

use super::{ACCEPTED, queue_job, reread};
use crate::app::{App, Caller};
use crate::audit::{self, NewEvent};
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::ledger::{self, ResourceRef};
use crate::store::{ImageRow, NewAgent, StoreError, Tx};
use crate::validate::Checks;

/// Validates the request and names the account the Agent is for.
fn target_account<'a>(caller: &'a Caller, request: &'a ProvisionAgent) -> Result<&'a str> {
    let mut checks = Checks::new();
    checks.dns_label("name", &request.name);
    let account_id = caller
        .target_account(request.account_id.as_deref())
        .unwrap_or_else(|complaint| {
            checks.fail("account_id", complaint);
            ""
        });
    checks.finish()?;
    Ok(account_id)
}

/// The current release and its image reference on `provider`.
pub(super) async fn current_release(tx: &mut Tx, provider: &str) -> Result<(ImageRow, String)> {
    let image = tx.current_image().await?.ok_or_else(|| {
        Error::Conflict(
            "no image release is current: register one with POST /api/images and select it with PUT /api/images/current"
                .to_owned(),
        )
    })?;
    let refs: BTreeMap<String, String> = serde_json::from_str(&image.refs)
        .map_err(|e| StoreError::Corrupt(format!("image {} refs: {e}", image.id)))?;
    let image_ref = refs.get(provider).cloned().ok_or_else(|| {
        Error::Conflict(format!(
            "the current release {} has no image for provider {}",
            image.version, provider
        ))
    })?;
    Ok((image, image_ref))
}

/// Asks the providers new Agents need whether they would take one on the current release,
/// before anything is recorded, so a refusal (an image, server type or location the provider
/// does not have) or a failing provider reaches the caller, not a job.
pub(super) async fn preflight(app: &App) -> Result<()> {
    let provider = app.providers.default_cloud().name;
    let (_, image_ref) = current_release(&mut app.store.read().await?, provider).await?;
    let placement = crate::providers::Placement {
        image: &image_ref,
        server_type: None,
        location: None,
    };
    app.providers
        .default_cloud()
        .servers
        .preflight(&placement)
        .await
        .map_err(|e| {
            // The image is the release's, not a field of the request.
            let e = e.not_the_callers(&format!("the current release's {provider} reference"));
            Error::provider(provider, &e)
        })?;
    if let Some(tunnels) = app.providers.tunnels() {
        tunnels
            .preflight()
            .await
            .map_err(|e| Error::provider("the tunnel provider", &e))?;
    }
    Ok(())
}

pub async fn provision(
    app: &App,
    caller: &Caller,
    request: &ProvisionAgent,
    idem: Option<&IdempotencyKey>,
) -> Result<Agent> {
    let account_id = target_account(caller, request)?;
    let provider = app.providers.default_cloud().name;
    if !crate::ids::looks_like(prefix::ACCOUNT, account_id) {
        return Err(Error::invalid(
            "account_id",
            format!("no account {}", account_id.escape_debug()),
        ));
    }
    preflight(app).await?;
    let mut tx = app.store.write().await?;
    let now = app.clock.now();
    if tx.account(account_id).await?.is_none() {
        return Err(Error::invalid(
            "account_id",
            format!("no account {account_id}"),
        ));
    }
    let (image, image_ref) = current_release(&mut tx, provider).await?;
    let image_ref = &image_ref;

    let agent_id = new_id(prefix::AGENT);
    tx.insert_agent(&NewAgent {
        id: &agent_id,
        account_id,
        name: &request.name,
        provider,
        image_id: &image.id,
        image_ref,
        env: &image.env,
        provisioned_at: now.as_millis(),
        cloned_from: None,
    })
    .await?;
    // Paused until the VM is seen running.
    ledger::open(
        &mut tx,
        ResourceRef::agent(&agent_id),
        account_id,
        PeriodState::Paused,
        now,
    )
    .await?;
    audit::append(
        &mut tx,
        NewEvent {
            details: serde_json::json!({
                "name": request.name,
                "provider": provider,
                "image_id": image.id,
                "image_version": image.version,
            }),
            ..NewEvent::by(
                caller,
                now,
                AuditAction::AgentProvision,
                ResourceRef::agent(&agent_id),
                account_id,
            )
        },
    )
    .await?;
    queue_job(&mut tx, AgentOperation::Provision, &agent_id, caller, now).await?;
    let agent = reread(&mut tx, &agent_id).await?;
    idempotency::record(&mut tx, idem, ACCEPTED, &agent).await?;
    tx.commit().await?;
    app.jobs_queued.notify_one();
    info!(
        request_id = %caller.request_id,
        account_id = %account_id,
        agent_id = %agent_id,
        image_version = %image.version,
        provider = %provider,
        "agent provisioning accepted"
    );
    Ok(agent)
}
