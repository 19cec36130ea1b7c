//! The test's handle on a running fake: plant the apps, machines and volumes that exist before
//! control sees them (the legacy Agents being imported), read what exists, set a machine's
//! state, inject faults. It never goes through HTTP, so using it spends no limit and counts no
//! call.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use serde_json::{Map, Value, json};

use super::state::MachineState;
use super::{Shared, lock};
use crate::common::faults;

/// What an injected fault does to a matching call; its code is Fly's error `status`
/// (`insufficient_capacity`, `name_taken`, …; empty for none).
pub type Fault = faults::Fault<String>;

/// Inspection and fault injection for one running fake; cheap to clone. Its faults, call
/// counts and answers are `common::control::Control`'s; the rest is Fly's.
pub type Control = crate::common::control::Control<Shared>;

/// A legacy Agent planted in the fake: its app, machine and volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planted {
    pub app: String,
    pub machine_id: String,
    pub volume_id: String,
    pub instance_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppView {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineView {
    pub id: String,
    pub app: String,
    pub name: String,
    pub state: MachineState,
    pub image: String,
    pub metadata: BTreeMap<String, String>,
    /// The config's `env`.
    pub env: BTreeMap<String, String>,
    /// The signal of the last stop, if any.
    pub last_signal: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    pub id: String,
    pub app: String,
    pub name: String,
    pub attached_machine: Option<String>,
}

impl Control {
    /// The next `times` matching calls answer `status` with Fly's body `{"error": message,
    /// "status": code}` (no `status` when `code` is empty).
    pub fn fail_next(
        &self,
        method: &Method,
        template: &str,
        times: u32,
        status: u16,
        code: &str,
        message: &str,
    ) {
        self.inject(
            method,
            template,
            times,
            Fault::Error {
                status,
                code: code.to_owned(),
                message: message.to_owned(),
            },
        );
    }

    /// A token bucket of `burst` calls refilled at `per_second`, starting full.
    pub fn set_rate_limit(&self, per_second: u32, burst: u32) {
        lock(&self.shared.gate).limiter = super::gate::Bucket::new(Some((per_second, burst)));
    }

    /// How long transient states last from now on.
    pub fn set_transition_delay(&self, delay: Duration) {
        lock(&self.shared.state).delay = delay;
    }

    /// An app in the fake's organization, as if made before (nothing if it exists).
    pub fn plant_app(&self, name: &str) {
        self.shared.with(|org, now| {
            if !org.apps.contains_key(name) {
                org.new_app(name, "default", now);
            }
        });
    }

    /// A legacy Agent as it runs on Fly already: app `app` (made if missing) with a volume
    /// `data` and a machine of `image` in `state` mounting it at `/data`, whose config carries
    /// `env`.
    pub fn plant(
        &self,
        app: &str,
        image: &str,
        state: MachineState,
        env: &[(&str, &str)],
    ) -> Planted {
        self.plant_app(app);
        self.shared.with(|org, now| {
            let volume_id = org.new_volume(app, "data", "fra", 10, true, now);
            let env: Map<String, Value> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            let config = json!({
                "image": image,
                "env": env,
                "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 1024},
                "mounts": [{"volume": volume_id, "path": "/data"}],
                "restart": {"policy": "on-failure"},
                "metadata": {},
            });
            let Value::Object(config) = config else {
                unreachable!("a JSON object literal")
            };
            let machine_id = org.new_machine(app, Some(app.to_owned()), "fra", config, state, now);
            let instance_id = org
                .machine(app, &machine_id)
                .map(|m| m.instance_id.clone())
                .unwrap_or_default();
            Planted {
                app: app.to_owned(),
                machine_id,
                volume_id,
                instance_id,
            }
        })
    }

    /// Puts a machine into `state` at once (a crash is `Failed`, a stop from inside `Stopped`).
    /// Returns false when there is no such machine.
    pub fn set_machine_state(&self, app: &str, machine_id: &str, state: MachineState) -> bool {
        self.shared.with(|org, _| {
            let Some(m) = org.machine_mut(app, machine_id) else {
                return false;
            };
            m.state = state;
            m.settles_at = None;
            true
        })
    }

    pub fn apps(&self) -> Vec<AppView> {
        self.shared.with(|org, _| {
            org.apps
                .values()
                .map(|a| AppView {
                    name: a.name.clone(),
                })
                .collect()
        })
    }

    /// Every machine, destroyed ones included, oldest first.
    pub fn machines(&self) -> Vec<MachineView> {
        self.shared.with(|org, _| {
            org.machines
                .values()
                .map(|m| MachineView {
                    id: m.id.clone(),
                    app: m.app.clone(),
                    name: m.name.clone(),
                    state: m.state,
                    image: m.image().to_owned(),
                    metadata: m.metadata(),
                    env: m
                        .config
                        .get("env")
                        .and_then(Value::as_object)
                        .map(|e| {
                            e.iter()
                                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                                .collect()
                        })
                        .unwrap_or_default(),
                    last_signal: m.last_signal.clone(),
                })
                .collect()
        })
    }

    /// The machines not destroyed.
    pub fn live_machines(&self) -> Vec<MachineView> {
        self.machines()
            .into_iter()
            .filter(|m| m.state != MachineState::Destroyed)
            .collect()
    }

    pub fn machine(&self, machine_id: &str) -> Option<MachineView> {
        self.machines().into_iter().find(|m| m.id == machine_id)
    }

    /// The volumes not destroyed, oldest first.
    pub fn volumes(&self) -> Vec<VolumeView> {
        self.shared.with(|org, _| {
            org.volumes
                .values()
                .filter(|v| !v.destroyed)
                .map(|v| VolumeView {
                    id: v.id.clone(),
                    app: v.app.clone(),
                    name: v.name.clone(),
                    attached_machine: v.attached_machine.clone(),
                })
                .collect()
        })
    }
}
