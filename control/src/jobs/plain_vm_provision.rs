//! Provisioning a Plain VM: its own firewall (inbound TCP/22 from anywhere, nothing else),
//! then its server with public IPv4 and IPv6, that firewall applied and its one-shot
//! first-boot document, then running (its addresses recorded). On a job's first run each is
//! made at once (a name taken means an earlier attempt made it: it is found by our labels and
//! adopted); on a later run it is looked up first. A provisioning that fails for good releases
//! what it made (`plain_vm::RELEASE`).

use control_api::agents::PeriodState;
use control_api::usage::ResourceKind;

use super::plain_vm::{PlainVmJob, RELEASE, cloud, firewalls, plain_vm, provider_name, running};
use super::{Step, StepCx, StepError, StepFuture, find_or_make};
use crate::app::App;
use crate::cloud_init::{PlainVmFirstBoot, plain_vm_document};
use crate::plain_vms::{firewall::default_rules, given_keys};
use crate::providers::{FirewallSpec, ProviderError, Secret, ServerSpec, resource_labels};
use crate::store::PlainVmRow;

pub(super) static KIND: PlainVmJob = PlainVmJob {
    steps: &[
        Step {
            name: "firewall",
            run: firewall,
        },
        Step {
            name: "server",
            run: server,
        },
        Step {
            name: "running",
            run: running,
        },
    ],
    undo: RELEASE,
    to: Some(PeriodState::Running),
};

/// How long a replica waits for the one holding a VM's password hash to make its server.
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The VM's own firewall, with the default ruleset.
fn firewall<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let vm = plain_vm(cx).await?;
        let firewalls = firewalls(cx.app, &vm)?;
        let labels = resource_labels(ResourceKind::PlainVm, &vm.id);
        let selector = &labels;
        let find = move || async move {
            let found = firewalls.list_firewalls(selector, None).await?;
            Ok(found.items.into_iter().next().map(|f| f.id))
        };
        let spec = FirewallSpec {
            name: provider_name(&vm),
            labels: labels.clone(),
            rules: default_rules(),
        };
        find_or_make(cx, find, async {
            Ok(firewalls.create_firewall(&spec).await?.id)
        })
        .await
    })
}

/// Finds the VM's server by its labels, or creates it with its firewall and first-boot
/// document.
fn server<'a>(cx: &'a StepCx<'a>) -> StepFuture<'a> {
    Box::pin(async move {
        let vm = plain_vm(cx).await?;
        let servers = &cloud(cx.app, &vm)?.servers;
        let labels = resource_labels(ResourceKind::PlainVm, &vm.id);
        let selector = &labels;
        let find = move || async move {
            let found = servers.list_servers(selector, None).await?;
            Ok(found.items.into_iter().next().map(|s| s.id))
        };
        let make = async {
            let spec = ServerSpec {
                name: provider_name(&vm),
                image: vm.image.clone(),
                server_type: Some(vm.server_type.clone()),
                location: Some(vm.location.clone()),
                labels: labels.clone(),
                user_data: Some(first_boot(cx.app, &vm).await?),
                firewall_ids: cx
                    .output("firewall")
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                volume_ids: Vec::new(),
            };
            Ok(servers.create_server(&spec).await?.id)
        };
        find_or_make(cx, find, make).await
    })
}

/// The VM's first-boot document: its host name, the keys it was given, and the hash of the
/// one-time password its caller was shown, which only the replica that answered holds.
async fn first_boot(app: &App, vm: &PlainVmRow) -> Result<Secret, StepError> {
    let password_hash = if vm.one_time_password {
        Some(password_hash(app, vm).await?)
    } else {
        None
    };
    plain_vm_document(&PlainVmFirstBoot {
        hostname: vm.hostname.clone(),
        default_user: vm.default_user.clone(),
        ssh_keys: given_keys(vm)?.into_iter().map(|k| k.public_key).collect(),
        password_hash,
    })
    .map_err(|e| ProviderError::permanent(format!("plain VM {} user data: {e}", vm.id)).into())
}

/// The password's hash from this replica's memory. Without it: wait while the replica that
/// holds it is alive (it will make the server), else fail, making nothing — a server whose
/// password is not the one shown would lock its owner out.
async fn password_hash(app: &App, vm: &PlainVmRow) -> Result<String, StepError> {
    if let Some(hash) = app.passwords.get(&vm.id) {
        return Ok(hash.0);
    }
    let holder = vm.password_replica.as_deref().unwrap_or("-");
    let silent_since =
        app.clock.now().as_millis() - crate::clock::millis(app.settings.ingest.replica_timeout);
    let alive = holder != app.replica_id
        && app
            .store
            .read()
            .await?
            .replica_seen_at(holder)
            .await?
            .is_some_and(|seen| seen >= silent_since);
    if alive {
        return Err(StepError::Wait {
            reason: format!(
                "the one-time password of plain VM {} is held by replica {holder}, which makes its server",
                vm.id
            ),
            after: HOLDER_WAIT,
        });
    }
    Err(ProviderError::permanent(format!(
        "the one-time password shown when plain VM {} was requested existed only in the memory \
         of control replica {holder}, which stopped before making the server; no server was \
         made with another: provision the VM again",
        vm.id
    ))
    .into())
}
