//! Provisioning a clone: a provisioning job whose outputs start with the clone's parameters
//! (`agents::CloneParams`: the source, and the state it was in when the clone was accepted).
//!
//! Steps: a running source is shut down (the stop job's own ACPI shutdown, and power cut after
//! the stop grace) and recorded paused once its provider reports it off, as any observed stop
//! is; the clone's tunnel, firewall and volume are made; the cloud copies the source's slice
//! for the clone (`Slices::seed_slice`, which refuses a source that is on); a source that was
//! running is powered on again and recorded running once it runs; then the clone's server is
//! created (it boots with the copy as its slice) and awaited. A source that was stopped stays
//! stopped. Each step is safe to run twice: shutting down what is off, powering on what is on,
//! and recording a state already recorded change nothing, and a copy is made once.
//!
//! If the clone cannot be made, the undo steps put the source back first, then drop the copy
//! and release whatever of the clone's exists. Either way, when the job ends the source's
//! `cloning_to` is cleared in the transaction that records the clone's outcome.
//!
//! On Hetzner (not built yet: the cloud has no `Slices`, so such clones are refused at the
//! API) the copy cannot be made by the API: the source's volume is attached to the clone's
//! new server, whose vm-agent copies it into its own slice on first boot and reports progress
//! in heartbeats; the source's volume then goes back to the source. See README, "Cloning".

use std::sync::Arc;

use async_trait::async_trait;
use control_api::Timestamp;
use control_api::agents::PeriodState;
use serde_json::Value;

use super::agent::{self, agent};
use super::agent_destroy::{delete_firewall, delete_server, delete_tunnel, delete_volume};
use super::agent_provision as provision;
use super::{JobKind, Outputs, Step, StepCx, StepError, StepFuture, server};
use crate::agents::{self, Cas, CloneParams};
use crate::app::App;
use crate::error::Error;
use crate::providers::{ProviderError, Servers};
use crate::store::{JobRow, StoreError, Tx};

pub(super) static KIND: CloneJob = CloneJob;

/// The job kind of a clone's provisioning.
pub(super) struct CloneJob;

const STEPS: &[Step] = &[
    Step {
        name: "source_shutdown",
        run: source_shutdown,
    },
    Step {
        name: "source_off",
        run: source_off,
    },
    Step {
        name: "tunnel",
        run: provision::tunnel,
    },
    Step {
        name: "firewall",
        run: provision::firewall,
    },
    Step {
        name: "volume",
        run: provision::volume,
    },
    Step {
        name: "slice_copy",
        run: slice_copy,
    },
    Step {
        name: "source_power_on",
        run: source_power_on,
    },
    Step {
        name: "source_running",
        run: source_running,
    },
    Step {
        name: "server",
        run: provision::server,
    },
    Step {
        name: "running",
        run: provision::running,
    },
];

const UNDO: &[Step] = &[
    Step {
        name: "source_restore",
        run: source_restore,
    },
    Step {
        name: "discard_copy",
        run: discard_copy,
    },
    Step {
        name: "delete_server",
        run: delete_server,
    },
    Step {
        name: "delete_volume",
        run: delete_volume,
    },
    Step {
        name: "delete_firewall",
        run: delete_firewall,
    },
    Step {
        name: "delete_tunnel",
        run: delete_tunnel,
    },
];

/// Whether `job` provisions a clone.
pub(super) fn is_clone(job: &JobRow) -> bool {
    serde_json::from_str::<Outputs>(&job.outputs)
        .is_ok_and(|outputs| outputs.contains_key(CloneParams::KEY))
}

fn params_in(job: &JobRow, outputs: &Outputs) -> Result<CloneParams, StoreError> {
    let raw = outputs.get(CloneParams::KEY).cloned().unwrap_or_default();
    serde_json::from_value(raw)
        .map_err(|e| StoreError::Corrupt(format!("job {} clone parameters: {e}", job.id)))
}

fn params(cx: &StepCx<'_>) -> Result<CloneParams, StepError> {
    Ok(params_in(cx.job, cx.outputs)?)
}

/// For a source that was running when the clone was asked for: the job's parameters, its
/// server and the servers of its cloud. `None`: it was not, and stays as it is.
async fn running_source<'a>(
    cx: &StepCx<'a>,
) -> Result<Option<(CloneParams, String, &'a Arc<dyn Servers>)>, StepError> {
    let params = params(cx)?;
    if params.source_was != PeriodState::Running {
        return Ok(None);
    }
    let (id, servers) = source_server(cx, &params).await?;
    Ok(Some((params, id, servers)))
}

/// Whether the server `id` is powered on.
async fn is_on(servers: &Arc<dyn Servers>, id: &str) -> Result<bool, StepError> {
    Ok(servers
        .get_server(id)
        .await?
        .is_some_and(|s| s.status.is_on()))
}

/// The source's server and the servers of its cloud.
async fn source_server<'a>(
    cx: &StepCx<'a>,
    params: &CloneParams,
) -> Result<(String, &'a Arc<dyn Servers>), StepError> {
    let source = cx
        .app
        .store
        .read()
        .await?
        .agent(&params.source_id)
        .await?
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "job {} clones unknown agent {}",
                cx.job.id, params.source_id
            ))
        })?;
    let id = source.provider_id.clone().ok_or_else(|| {
        ProviderError::permanent(format!("agent {} has no VM to copy", source.id))
    })?;
    Ok((id, &agent::cloud(cx.app, &source)?.servers))
}

/// Records the source seen `to` (from the other state), as any observation of it is: a
/// compare-and-set that changes nothing if it is recorded so already.
async fn record_source(cx: &StepCx<'_>, source_id: &str, to: PeriodState) -> Result<(), Error> {
    let from = match to {
        PeriodState::Running => PeriodState::Paused,
        PeriodState::Paused => PeriodState::Running,
    };
    let mut tx = cx.app.store.write().await?;
    agents::record_observed(
        &mut tx,
        cx.app.ingest.records().clone(),
        source_id,
        Cas::Observed { from, to },
        cx.app.clock.now(),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A running source is asked to shut down (unless it is off already); the output is when.
fn source_shutdown<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some((_, id, servers)) = running_source(cx).await? else {
            return Ok(None);
        };
        if !is_on(servers, &id).await? {
            return Ok(Some(Value::from(cx.app.clock.now().as_millis())));
        }
        server::shutdown(cx, servers, &id).await
    })
}

/// Done once the source is off (its power cut after the stop grace), and recorded paused.
fn source_off<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some((params, id, servers)) = running_source(cx).await? else {
            return Ok(None);
        };
        server::off_after(cx, servers, &id, "source_shutdown").await?;
        record_source(cx, &params.source_id, PeriodState::Paused).await?;
        Ok(None)
    })
}

/// The cloud copies the source's slice (its server is off) for the clone.
fn slice_copy<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let params = params(cx)?;
        let clone = agent(cx).await?;
        let (from, _) = source_server(cx, &params).await?;
        let slices = agent::cloud(cx.app, &clone)?
            .slices
            .as_ref()
            .ok_or_else(|| {
                ProviderError::permanent(format!(
                    "provider {} cannot copy an Agent's slice",
                    clone.provider
                ))
            })?;
        slices.seed_slice(&from, &clone.id).await?;
        Ok(None)
    })
}

/// A source that was running is powered on again.
fn source_power_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some((_, id, servers)) = running_source(cx).await? else {
            return Ok(None);
        };
        servers.power_on(&id).await?;
        Ok(None)
    })
}

/// Done once a source that was running runs again, and is recorded running.
fn source_running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some((params, id, servers)) = running_source(cx).await? else {
            return Ok(None);
        };
        server::running(servers, &id).await?;
        record_source(cx, &params.source_id, PeriodState::Running).await?;
        Ok(None)
    })
}

/// Undo: a source that was running and is off is powered on again, and recorded running.
fn source_restore<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some((params, id, servers)) = running_source(cx).await? else {
            return Ok(None);
        };
        if !is_on(servers, &id).await? {
            servers.power_on(&id).await?;
        }
        server::running(servers, &id).await?;
        record_source(cx, &params.source_id, PeriodState::Running).await?;
        Ok(None)
    })
}

/// Undo: the copy made for the clone, if its server never took it.
fn discard_copy<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let clone = agent(cx).await?;
        if let Some(slices) = &agent::cloud(cx.app, &clone)?.slices {
            slices.discard_seed(&clone.id).await?;
        }
        Ok(None)
    })
}

/// Clears the source's `cloning_to`, in the transaction that ends the clone's job.
async fn end_cloning(
    tx: &mut Tx,
    job: &JobRow,
    outputs: &Outputs,
    now: Timestamp,
) -> Result<(), Error> {
    let params = params_in(job, outputs)?;
    tx.end_cloning(&params.source_id, &job.resource_id, now.as_millis())
        .await?;
    Ok(())
}

#[async_trait]
impl JobKind for CloneJob {
    fn steps(&self) -> &'static [Step] {
        STEPS
    }

    fn undo(&self) -> &'static [Step] {
        UNDO
    }

    async fn conclude(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        outputs: &Outputs,
    ) -> Result<bool, Error> {
        let concluded = agent::conclude(app, tx, job, outputs, Some(PeriodState::Running)).await?;
        if concluded {
            end_cloning(tx, job, outputs, app.clock.now()).await?;
        }
        Ok(concluded)
    }

    async fn give_up(
        &self,
        app: &App,
        tx: &mut Tx,
        job: &JobRow,
        message: &str,
        _released: bool,
    ) -> Result<(), Error> {
        agent::give_up(app, tx, job, message).await?;
        let outputs = super::runner::outputs_of(job)?;
        end_cloning(tx, job, &outputs, app.clock.now()).await
    }
}
