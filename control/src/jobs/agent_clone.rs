//! Provisioning a clone: a provisioning job whose outputs start with the clone's parameters
//! (`agents::CloneParams`: the source, and the state it was in when the clone was accepted).
//!
//! A running source is first shut down (the stop job's own ACPI shutdown, and power cut after
//! the stop grace) and recorded paused once its provider reports it off, as any observed stop
//! is; then the clone's tunnel, firewall and volume are made. How the source's files get into
//! the clone's slice depends on the cloud ([`Way`]):
//!
//! - **Seed** (a cloud with `Slices`: the local provider): the cloud copies the source's slice
//!   for the clone (`Slices::seed_slice`, which refuses a source that is on); a source that was
//!   running is powered on again and recorded running; then the clone's server is created (it
//!   boots with the copy as its slice) and awaited.
//! - **Lend** (a cloud whose volumes attach: Hetzner, where the API cannot copy a volume): the
//!   source's volume is detached from its server, which stays off; the clone's server is
//!   created with its own, empty, volume and `[clone_from]` naming the source's volume's
//!   device in its agent.toml. Once its heartbeat shows its own slice mounted (so the image
//!   mounted its own volume, not the source's: both carry the slice's label), the source's
//!   volume is attached to it; `vm-agent clone-slice` on the clone mounts it read-only and
//!   copies it, reporting progress in heartbeats, which the job follows with no time limit
//!   while the copy advances and the clone is heard from. Once the clone reports the copy
//!   done, the volume goes back to the source's server, and a source that was running is
//!   powered on again and recorded running.
//!
//! A source that was stopped stays stopped. Each step is safe to run twice: shutting down
//! what is off, powering on what is on, attaching a volume where it is, and recording a state
//! already recorded change nothing, and a copy is made once.
//!
//! If the clone cannot be made, the undo steps put the source back first (its volume returned
//! to it, the clone's VM powered off before the volume is taken from it; then its power), then
//! drop the copy and release whatever of the clone's exists. Either way, when the job ends the
//! source's `cloning_to` is cleared in the transaction that records the clone's outcome. See
//! README, "Cloning".

use std::sync::Arc;

use std::time::Duration;

use async_trait::async_trait;
use control_api::Timestamp;
use control_api::agent::{CloneReport, CloneState, SliceState};
use control_api::agent_config::CloneFromToml;
use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;
use serde_json::{Value, json};

use super::agent::{self, agent};
use super::agent_destroy::{delete_firewall, delete_server, delete_tunnel, delete_volume};
use super::agent_provision as provision;
use super::{JobKind, Outputs, Step, StepCx, StepError, StepFuture, StepResult, server};
use crate::agents::{self, Cas, CloneParams};
use crate::app::App;
use crate::clock::millis;
use crate::error::Error;
use crate::ingest::Latest;
use crate::providers::{ProviderError, Servers, Slices, Volume, Volumes, resource_labels};
use crate::store::{AgentRow, JobRow, StoreError, Tx};

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
        name: "source_lend",
        run: source_lend,
    },
    Step {
        name: "server",
        run: provision::server,
    },
    Step {
        name: "clone_slice_mounted",
        run: clone_slice_mounted,
    },
    Step {
        name: "lend_attach",
        run: lend_attach,
    },
    Step {
        name: "slice_copied",
        run: slice_copied,
    },
    Step {
        name: "source_return",
        run: source_return,
    },
    Step {
        name: "source_back_on",
        run: source_back_on,
    },
    Step {
        name: "source_back_running",
        run: source_back_running,
    },
    Step {
        name: "running",
        run: provision::running,
    },
];

const UNDO: &[Step] = &[
    Step {
        name: "volume_return",
        run: volume_return,
    },
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

/// How long a clone's copy is looked at again while it advances.
const COPY_LOOK_AGAIN: Duration = Duration::from_secs(10);

/// How the clone's slice gets the source's files, by what its cloud can do.
enum Way<'a> {
    /// The cloud copies the slice before the clone's server is made.
    Seed(&'a Arc<dyn Slices>),
    /// The source's volume is lent to the clone's server, whose vm-agent copies it.
    Lend(&'a Arc<dyn Volumes>),
}

fn way<'a>(app: &'a App, clone: &AgentRow) -> Result<Way<'a>, StepError> {
    let cloud = agent::cloud(app, clone)?;
    if let Some(slices) = &cloud.slices {
        return Ok(Way::Seed(slices));
    }
    if let Some(volumes) = &cloud.volumes {
        return Ok(Way::Lend(volumes));
    }
    Err(ProviderError::permanent(format!(
        "provider {} cannot copy an Agent's slice",
        clone.provider
    ))
    .into())
}

/// The clone, and the volumes of its cloud when its slice is copied by lending the source's
/// volume.
async fn clone_lending<'a>(
    cx: &StepCx<'a>,
) -> Result<(AgentRow, Option<&'a Arc<dyn Volumes>>), StepError> {
    let clone = agent(cx).await?;
    let volumes = match way(cx.app, &clone)? {
        Way::Lend(volumes) => Some(volumes),
        Way::Seed(_) => None,
    };
    Ok((clone, volumes))
}

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

/// [`running_source`], for the steps of one way only: `None` on a clone made the other way.
async fn running_source_of<'a>(
    cx: &StepCx<'a>,
    lend: bool,
) -> Result<Option<(CloneParams, String, &'a Arc<dyn Servers>)>, StepError> {
    if clone_lending(cx).await?.1.is_some() != lend {
        return Ok(None);
    }
    running_source(cx).await
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

/// Seed: the cloud copies the source's slice (its server is off) for the clone.
fn slice_copy<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let clone = agent(cx).await?;
        let Way::Seed(slices) = way(cx.app, &clone)? else {
            return Ok(None);
        };
        let params = params(cx)?;
        let (from, _) = source_server(cx, &params).await?;
        slices.seed_slice(&from, &clone.id).await?;
        Ok(None)
    })
}

/// Powers a source that was running on again, on the clone's way (`lend`) only.
async fn power_on_source(cx: &StepCx<'_>, lend: bool) -> StepResult {
    let Some((_, id, servers)) = running_source_of(cx, lend).await? else {
        return Ok(None);
    };
    servers.power_on(&id).await?;
    Ok(None)
}

/// Done once a source that was running runs again, and is recorded running; on the clone's
/// way (`lend`) only.
async fn source_runs(cx: &StepCx<'_>, lend: bool) -> StepResult {
    let Some((params, id, servers)) = running_source_of(cx, lend).await? else {
        return Ok(None);
    };
    server::running(servers, &id).await?;
    record_source(cx, &params.source_id, PeriodState::Running).await?;
    Ok(None)
}

/// Seed: a source that was running is powered on again once its slice is copied.
fn source_power_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(power_on_source(cx, false))
}

/// Seed: done once a source that was running runs again.
fn source_running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(source_runs(cx, false))
}

/// Lend: a source that was running is powered on again once its volume is back.
fn source_back_on<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(power_on_source(cx, true))
}

/// Lend: done once a source that was running runs again.
fn source_back_running<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(source_runs(cx, true))
}

/// The source's volume (its slice), found by its labels; `None` if it has none.
async fn source_volume(
    volumes: &Arc<dyn Volumes>,
    params: &CloneParams,
) -> Result<Option<Volume>, StepError> {
    let labels = resource_labels(ResourceKind::Agent, &params.source_id);
    Ok(volumes
        .list_volumes(&labels, None)
        .await?
        .items
        .into_iter()
        .next())
}

/// The volume lent to the clone, and where the clone's VM finds it, as `source_lend` said.
fn lent(cx: &StepCx<'_>) -> Option<(String, String)> {
    let lent = cx.outputs.get("source_lend")?;
    Some((
        lent.get("volume")?.as_str()?.to_owned(),
        lent.get("device")?.as_str()?.to_owned(),
    ))
}

/// Where a clone whose copy is made on its VM copies from (its agent.toml's `[clone_from]`);
/// `None` for every other Agent.
pub(super) fn clone_from(cx: &StepCx<'_>) -> Result<Option<CloneFromToml>, StepError> {
    if !cx.outputs.contains_key(CloneParams::KEY) {
        return Ok(None);
    }
    let Some((_, device)) = lent(cx) else {
        return Ok(None);
    };
    Ok(Some(CloneFromToml {
        source_agent: params(cx)?.source_id,
        device: Some(device.into()),
        directory: None,
    }))
}

/// Lend: the source's volume is detached from its server (which is off); the output is the
/// volume and the device the clone's VM will find it at.
fn source_lend<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let Some(volumes) = clone_lending(cx).await?.1 else {
            return Ok(None);
        };
        let params = params(cx)?;
        let (source, servers) = source_server(cx, &params).await?;
        let volume = source_volume(volumes, &params).await?.ok_or_else(|| {
            ProviderError::permanent(format!(
                "agent {} has no volume: no slice to copy",
                params.source_id
            ))
        })?;
        let device = volume.device.clone().ok_or_else(|| {
            ProviderError::permanent(format!(
                "the cloud does not say where volume {} appears on a server",
                volume.id
            ))
        })?;
        match volume.server.as_deref() {
            None => {}
            Some(on) if on == source => {
                if is_on(servers, &source).await? {
                    return Err(ProviderError::transient(format!(
                        "agent {}'s server {source} is on: its volume is lent only while it is off",
                        params.source_id
                    ))
                    .into());
                }
                volumes.detach_volume(&volume.id).await?;
            }
            Some(other) => {
                return Err(ProviderError::permanent(format!(
                    "agent {}'s volume {} is attached to server {other}, not to its own {source}",
                    params.source_id, volume.id
                ))
                .into());
            }
        }
        Ok(Some(json!({"volume": volume.id, "device": device})))
    })
}

/// The clone's latest heartbeat and when it came, if it has sent one.
async fn clone_heartbeat(cx: &StepCx<'_>, clone: &AgentRow) -> Result<Option<Latest>, StepError> {
    Ok(cx.app.ingest.latest(&clone.id).await.map_err(Error::from)?)
}

fn look_again(reason: String) -> StepError {
    StepError::Wait {
        reason,
        after: COPY_LOOK_AGAIN,
    }
}

/// Lend: done once the clone's heartbeat shows its own slice mounted and its copy expected,
/// so the source's volume, which carries the same label, cannot be mounted in its place.
fn clone_slice_mounted<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (clone, Some(_)) = clone_lending(cx).await? else {
            return Ok(None);
        };
        match clone_heartbeat(cx, &clone).await?.map(|latest| latest.beat) {
            Some(beat) if beat.slice.state != SliceState::Missing && beat.clone.is_some() => {
                Ok(None)
            }
            Some(beat) if beat.clone.is_none() => Err(look_again(format!(
                "agent {}'s vm-agent reports no copy in its heartbeats (an image older than \
                 [clone_from]?)",
                clone.id
            ))),
            Some(_) => Err(look_again(format!(
                "agent {}'s slice is not mounted yet",
                clone.id
            ))),
            None => Err(look_again(format!(
                "agent {}'s VM has not reported yet",
                clone.id
            ))),
        }
    })
}

/// Lend: the source's volume is attached to the clone's server (not mounted: its vm-agent
/// mounts it read-only).
fn lend_attach<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (clone, Some(volumes)) = clone_lending(cx).await? else {
            return Ok(None);
        };
        let (volume, _) = lent(cx)
            .ok_or_else(|| StoreError::Corrupt(format!("job {} lent no volume", cx.job.id)))?;
        let server = agent::server_id(cx, &clone).await?.ok_or_else(|| {
            ProviderError::transient(format!("agent {}'s server is not found yet", clone.id))
        })?;
        volumes.attach_volume(&volume, &server).await?;
        Ok(None)
    })
}

/// A copy's figures, for the job's waiting message.
fn progress(report: &CloneReport) -> String {
    let of = |total: Option<u64>| total.map_or_else(String::new, |t| format!(" of {t}"));
    format!(
        "{}{} files, {}{} bytes",
        report.files_done,
        of(report.files_total),
        report.bytes_done,
        of(report.bytes_total)
    )
}

/// Lend: done once the clone reports its copy done. A failed copy fails the job (its undo
/// gives the volume back); while the copy advances and the clone is heard from, the job
/// follows it with no time limit.
fn slice_copied<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let (clone, Some(_)) = clone_lending(cx).await? else {
            return Ok(None);
        };
        let source = params(cx)?.source_id;
        let Some(latest) = clone_heartbeat(cx, &clone).await? else {
            return Err(look_again(format!(
                "agent {}'s VM has not reported yet",
                clone.id
            )));
        };
        // Heard from within the silence limit (allowing for a heartbeat read from what another
        // replica wrote behind, which is rewritten only so often while nothing changes).
        let silent = cx.app.clock.now().as_millis() - latest.seen_at
            > millis(cx.app.ingest.silent_after(&latest));
        let Some(report) = latest.beat.clone else {
            return Err(look_again(format!(
                "agent {}'s vm-agent reports no copy",
                clone.id
            )));
        };
        match report.state {
            CloneState::Done => Ok(None),
            CloneState::Failed => Err(ProviderError::permanent(format!(
                "agent {}'s VM could not copy agent {source}'s slice: {}",
                clone.id,
                report.error.as_deref().unwrap_or("no reason given")
            ))
            .into()),
            CloneState::Copying if !silent => Err(StepError::Progress {
                reason: format!(
                    "agent {}'s VM is copying agent {source}'s slice: {}",
                    clone.id,
                    progress(&report)
                ),
                after: COPY_LOOK_AGAIN,
            }),
            CloneState::Copying => Err(look_again(format!(
                "agent {}'s VM went silent while copying agent {source}'s slice ({})",
                clone.id,
                progress(&report)
            ))),
            CloneState::Waiting => Err(look_again(format!(
                "agent {}'s VM does not see agent {source}'s volume yet",
                clone.id
            ))),
        }
    })
}

/// The source's volume goes back to the source's server (from wherever it is), unless it is
/// there already. With `cut_power` (a clone given up, whose VM may still be reading it), a
/// VM other than the source's still holding it is powered off first; after a copy reported
/// done, the clone's VM has let go of it already.
async fn give_back(cx: &StepCx<'_>, volumes: &Arc<dyn Volumes>, cut_power: bool) -> StepResult {
    let params = params(cx)?;
    let Some(volume) = source_volume(volumes, &params).await? else {
        return Ok(None);
    };
    let (source, servers) = source_server(cx, &params).await?;
    match volume.server.as_deref() {
        Some(on) if on == source => return Ok(None),
        Some(on) => {
            if cut_power && is_on(servers, on).await? {
                servers.power_off(on).await?;
                return Err(look_again(format!(
                    "server {on} still holds agent {}'s volume: powering it off first",
                    params.source_id
                )));
            }
            volumes.detach_volume(&volume.id).await?;
        }
        None => {}
    }
    volumes.attach_volume(&volume.id, &source).await?;
    Ok(None)
}

/// Lend: once copied, the source's volume goes back to the source's server.
fn source_return<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        match clone_lending(cx).await?.1 {
            Some(volumes) => give_back(cx, volumes, false).await,
            None => Ok(None),
        }
    })
}

/// Undo (lend): the source's volume goes back to the source's server, wherever it got to.
fn volume_return<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        match clone_lending(cx).await?.1 {
            Some(volumes) => give_back(cx, volumes, true).await,
            None => Ok(None),
        }
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
