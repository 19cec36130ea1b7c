//! The routes: apps (`/v1/apps…`), machines (`/v1/apps/{app}/machines…`, with their power
//! actions, `wait` and metadata) and volumes (`/v1/apps/{app}/volumes…`), answering Fly's JSON
//! shapes and refusing in Fly's error body.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::Shared;
use super::gate::FlyError;
use super::state::{App, Machine, MachineState, State as Org, Volume, timestamp, unix_ms};

type Answer = Result<Response, FlyError>;

/// The longest `wait` Fly holds a call (its proxy's limit), in seconds.
const MAX_WAIT_SECS: u64 = 60;

fn ok(value: Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

fn query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn is_true(pairs: &[(String, String)], key: &str) -> bool {
    matches!(param(pairs, key), Some("true" | "1"))
}

/// An optional JSON body (empty is `{}`), as `T`.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, FlyError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| FlyError::bad_request(format!("invalid JSON: {e}")))
}

/// Splits an image reference into Fly's `image_ref`.
fn image_ref(image: &str) -> Value {
    let (name, digest) = image.split_once('@').unwrap_or((image, ""));
    let (registry, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') => (first, rest),
        _ => ("docker-hub-mirror.fly.io", name),
    };
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (rest, if digest.is_empty() { "latest" } else { "" }),
    };
    json!({
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "labels": {},
    })
}

pub(crate) fn render_machine(m: &Machine) -> Value {
    let events: Vec<Value> = m
        .events
        .iter()
        .map(|e| {
            json!({
                "type": e.kind,
                "status": e.status,
                "source": e.source,
                "timestamp": unix_ms(e.at),
            })
        })
        .collect();
    json!({
        "id": m.id,
        "name": m.name,
        "state": m.state.as_str(),
        "region": m.region,
        "instance_id": m.instance_id,
        "private_ip": m.private_ip,
        "config": Value::Object(m.config.clone()),
        "image_ref": image_ref(m.image()),
        "created_at": timestamp(m.created),
        "updated_at": timestamp(m.updated),
        "events": events,
        "host_status": "ok",
        "incomplete_config": null,
    })
}

fn render_volume(v: &Volume) -> Value {
    let blocks = v.size_gb * 262_144;
    json!({
        "id": v.id,
        "name": v.name,
        "state": if v.destroyed { "destroyed" } else { "created" },
        "size_gb": v.size_gb,
        "region": v.region,
        "zone": "7a1f",
        "encrypted": v.encrypted,
        "attached_machine_id": v.attached_machine,
        "attached_alloc_id": null,
        "created_at": timestamp(v.created),
        "blocks": blocks,
        "block_size": 4096,
        "blocks_free": blocks,
        "blocks_avail": blocks,
        "fstype": "ext4",
        "snapshot_retention": 5,
        "auto_backup_enabled": true,
        "host_dedication_key": "",
        "host_status": "ok",
    })
}

fn render_app(org: &Org, slug: &str, a: &App) -> Value {
    let machines = org
        .machines
        .values()
        .filter(|m| m.app == a.name && m.state != MachineState::Destroyed)
        .count();
    let volumes = org
        .volumes
        .values()
        .filter(|v| v.app == a.name && !v.destroyed)
        .count();
    json!({
        "id": a.id,
        "name": a.name,
        "machine_count": machines,
        "volume_count": volumes,
        "network": a.network,
        "status": if machines > 0 { "deployed" } else { "pending" },
        "organization": {"name": slug, "slug": slug},
        "created_at": timestamp(a.created),
    })
}

fn need_app(org: &Org, app: &str) -> Result<(), FlyError> {
    if org.apps.contains_key(app) {
        Ok(())
    } else {
        Err(FlyError::app_not_found())
    }
}

/// Fly's names: lowercase letters, digits and dashes.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub(crate) async fn list_apps(
    State(shared): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let pairs = query(raw.as_deref());
    if let Some(slug) = param(&pairs, "org_slug")
        && slug != shared.org_slug
    {
        return Err(FlyError::new(
            StatusCode::NOT_FOUND,
            "organization not found",
        ));
    }
    Ok(shared.with(|org, _| {
        let apps: Vec<Value> = org
            .apps
            .values()
            .map(|a| render_app(org, &shared.org_slug, a))
            .collect();
        ok(json!({"total_apps": apps.len(), "apps": apps}))
    }))
}

#[derive(serde::Deserialize)]
pub(crate) struct CreateApp {
    app_name: Option<String>,
    name: Option<String>,
    org_slug: Option<String>,
    network: Option<String>,
}

pub(crate) async fn create_app(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Answer {
    let req: CreateApp = body(&bytes)?;
    let name = req.app_name.or(req.name).unwrap_or_default();
    if !valid_name(&name, 63) || name.contains('_') {
        return Err(FlyError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "App name can only contain lowercase letters, numbers, and dashes",
        ));
    }
    if req
        .org_slug
        .as_deref()
        .is_some_and(|s| s != shared.org_slug)
    {
        return Err(FlyError::new(
            StatusCode::NOT_FOUND,
            "organization not found",
        ));
    }
    shared.with(|org, now| {
        if org.apps.contains_key(&name) {
            return Err(FlyError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Name has already been taken",
            )
            .code("name_taken"));
        }
        org.new_app(&name, req.network.as_deref().unwrap_or(""), now);
        let app = render_app(org, &shared.org_slug, &org.apps[&name]);
        Ok((StatusCode::CREATED, Json(app)).into_response())
    })
}

pub(crate) async fn get_app(State(shared): State<Arc<Shared>>, Path(app): Path<String>) -> Answer {
    shared.with(|org, _| {
        let a = org.apps.get(&app).ok_or_else(FlyError::app_not_found)?;
        Ok(ok(render_app(org, &shared.org_slug, a)))
    })
}

/// Deletes the app with every machine and volume in it.
pub(crate) async fn delete_app(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
) -> Answer {
    shared.with(|org, now| {
        org.apps.remove(&app).ok_or_else(FlyError::app_not_found)?;
        let at = org.clock.wall(now);
        for m in org.machines.values_mut().filter(|m| m.app == app) {
            m.state = MachineState::Destroyed;
            m.settles_at = None;
            m.updated = at;
        }
        for v in org.volumes.values_mut().filter(|v| v.app == app) {
            v.destroyed = true;
            v.attached_machine = None;
        }
        Ok(StatusCode::ACCEPTED.into_response())
    })
}

pub(crate) async fn list_machines(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let pairs = query(raw.as_deref());
    let include_deleted = is_true(&pairs, "include_deleted");
    let region = param(&pairs, "region").map(str::to_owned);
    shared.with(|org, _| {
        need_app(org, &app)?;
        let machines: Vec<Value> = org
            .machines
            .values()
            .filter(|m| m.app == app)
            .filter(|m| include_deleted || m.state != MachineState::Destroyed)
            .filter(|m| region.as_ref().is_none_or(|r| *r == m.region))
            .map(render_machine)
            .collect();
        Ok(ok(Value::Array(machines)))
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct CreateMachine {
    name: Option<String>,
    region: Option<String>,
    config: Option<Map<String, Value>>,
    #[serde(default)]
    skip_launch: bool,
}

pub(crate) async fn create_machine(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    bytes: Bytes,
) -> Answer {
    let req: CreateMachine = body(&bytes)?;
    let config = req.config.unwrap_or_default();
    if config
        .get("image")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(FlyError::bad_request(
            "invalid config.image: image is required",
        ));
    }
    if let Some(memory) = config
        .get("guest")
        .and_then(|g| g.get("memory_mb"))
        .and_then(Value::as_u64)
        && memory % 256 != 0
    {
        return Err(FlyError::bad_request(
            "invalid config.guest.memory_mb: must be a multiple of 256",
        ));
    }
    let region = req.region.unwrap_or_else(|| "fra".to_owned());
    shared.with(|org, now| {
        need_app(org, &app)?;
        let mounts: Vec<String> = config
            .get("mounts")
            .and_then(Value::as_array)
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m.get("volume").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if mounts.len() > 1 {
            return Err(FlyError::bad_request("a machine can only mount one volume"));
        }
        for vol in &mounts {
            let v = org
                .volume(&app, vol)
                .ok_or_else(FlyError::volume_not_found)?;
            if let Some(other) = &v.attached_machine {
                return Err(FlyError::precondition(format!(
                    "volume {vol} is already attached to machine {other}"
                )));
            }
        }
        let state = if req.skip_launch {
            MachineState::Created
        } else {
            MachineState::Starting
        };
        let id = org.new_machine(&app, req.name, &region, config, state, now);
        let m = org
            .machine(&app, &id)
            .ok_or_else(FlyError::machine_not_found)?;
        Ok(ok(render_machine(m)))
    })
}

/// A machine by app and id; a destroyed one is still found (state `destroyed`), as at Fly.
fn machine<'a>(org: &'a mut Org, app: &str, id: &str) -> Result<&'a mut Machine, FlyError> {
    need_app(org, app)?;
    org.machine_mut(app, id)
        .ok_or_else(FlyError::machine_not_found)
}

pub(crate) async fn get_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, _| Ok(ok(render_machine(machine(org, &app, &id)?))))
}

/// `DELETE …/{id}`: only a machine that is not running, unless `force=true` (or fly-go's
/// `kill=true`).
pub(crate) async fn destroy_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let pairs = query(raw.as_deref());
    let force = is_true(&pairs, "force") || is_true(&pairs, "kill");
    shared.with(|org, now| {
        let delay = org.delay;
        let at = org.clock.wall(now);
        let m = machine(org, &app, &id)?;
        match m.state {
            MachineState::Destroyed => return Err(FlyError::machine_not_found()),
            MachineState::Destroying => {}
            MachineState::Started
            | MachineState::Starting
            | MachineState::Stopping
            | MachineState::Suspending
                if !force =>
            {
                return Err(FlyError::precondition(
                    "unable to destroy machine, not currently stopped, suspended, or failed",
                ));
            }
            _ => Org::begin(m, MachineState::Destroying, delay, now, at, "destroy"),
        }
        Ok(ok(json!({"ok": true})))
    })
}

pub(crate) async fn start(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, now| {
        let delay = org.delay;
        let at = org.clock.wall(now);
        let m = machine(org, &app, &id)?;
        let previous = m.state;
        match previous {
            MachineState::Started | MachineState::Starting => {}
            MachineState::Created
            | MachineState::Stopped
            | MachineState::Suspended
            | MachineState::Failed => {
                Org::begin(m, MachineState::Starting, delay, now, at, "start");
            }
            MachineState::Destroyed => return Err(FlyError::machine_not_found()),
            other => {
                return Err(FlyError::precondition(format!(
                    "unable to start machine from current state: '{}'",
                    other.as_str()
                )));
            }
        }
        Ok(ok(json!({
            "previous_state": previous.as_str(),
            "migrated": false,
            "new_host": "",
        })))
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct Stop {
    signal: Option<String>,
    /// A Go duration (`"30s"`) or seconds; read for its shape only.
    #[expect(
        dead_code,
        reason = "accepted as Fly accepts it; the fake's delay decides"
    )]
    timeout: Option<Value>,
}

/// `POST …/stop {signal, timeout}`: `SIGKILL` stops at once, anything else after the delay.
pub(crate) async fn stop(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    bytes: Bytes,
) -> Answer {
    let req: Stop = body(&bytes)?;
    let signal = req.signal.unwrap_or_else(|| "SIGINT".to_owned());
    let kill = matches!(signal.as_str(), "SIGKILL" | "9" | "KILL");
    shared.with(|org, now| {
        let delay = if kill { Duration::ZERO } else { org.delay };
        let at = org.clock.wall(now);
        let m = machine(org, &app, &id)?;
        match m.state {
            MachineState::Started | MachineState::Starting | MachineState::Suspending => {
                m.last_signal = Some(signal.clone());
                Org::begin(m, MachineState::Stopping, delay, now, at, "stop");
            }
            MachineState::Stopping if kill => {
                m.last_signal = Some(signal.clone());
                m.settles_at = Some(now);
            }
            MachineState::Destroyed => return Err(FlyError::machine_not_found()),
            MachineState::Destroying => {
                return Err(FlyError::precondition(
                    "unable to stop machine from current state: 'destroying'",
                ));
            }
            _ => {}
        }
        Ok(ok(json!({"ok": true})))
    })
}

pub(crate) async fn suspend(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, now| {
        let delay = org.delay;
        let at = org.clock.wall(now);
        let m = machine(org, &app, &id)?;
        match m.state {
            MachineState::Started => {
                Org::begin(m, MachineState::Suspending, delay, now, at, "suspend");
            }
            MachineState::Suspended | MachineState::Suspending => {}
            MachineState::Destroyed => return Err(FlyError::machine_not_found()),
            other => {
                return Err(FlyError::precondition(format!(
                    "unable to suspend machine from current state: '{}'",
                    other.as_str()
                )));
            }
        }
        Ok(ok(json!({"ok": true})))
    })
}

/// `GET …/wait?state=…&timeout=…`: 200 once the machine is in one of the states, 408 when the
/// timeout (at most 60 s) runs out first.
pub(crate) async fn wait(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let pairs = query(raw.as_deref());
    let mut states = Vec::new();
    for (key, value) in &pairs {
        if key == "state" {
            for one in value.split(',') {
                match MachineState::parse(one) {
                    Some(
                        s @ (MachineState::Started
                        | MachineState::Stopped
                        | MachineState::Suspended
                        | MachineState::Destroyed
                        | MachineState::Created
                        | MachineState::Failed),
                    ) => states.push(s),
                    _ => return Err(FlyError::bad_request(format!("invalid state: {one}"))),
                }
            }
        }
    }
    if states.is_empty() {
        states.push(MachineState::Started);
    }
    let timeout = match param(&pairs, "timeout") {
        None => MAX_WAIT_SECS,
        Some(t) => t
            .trim_end_matches('s')
            .parse::<u64>()
            .map_err(|_| FlyError::bad_request(format!("invalid timeout: {t}")))?,
    }
    .clamp(1, MAX_WAIT_SECS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let state = shared.with(|org, _| machine(org, &app, &id).map(|m| m.state))?;
        if states.contains(&state) {
            return Ok(ok(json!({"ok": true})));
        }
        if tokio::time::Instant::now() >= deadline {
            let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            return Err(FlyError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "deadline_exceeded: timeout waiting for machine to be {}",
                    wanted.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn get_metadata(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, _| {
        let m = machine(org, &app, &id)?;
        Ok(ok(json!(m.metadata())))
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct SetMetadata {
    value: Option<String>,
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub(crate) async fn set_metadata(
    State(shared): State<Arc<Shared>>,
    Path((app, id, key)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let req: SetMetadata = body(&bytes)?;
    if !valid_key(&key) {
        return Err(FlyError::bad_request(format!(
            "invalid metadata key: {key}"
        )));
    }
    let value = req
        .value
        .ok_or_else(|| FlyError::bad_request("value is required"))?;
    shared.with(|org, _| {
        let m = machine(org, &app, &id)?;
        if m.state == MachineState::Destroyed {
            return Err(FlyError::machine_not_found());
        }
        m.metadata_mut().insert(key, Value::String(value));
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

pub(crate) async fn delete_metadata(
    State(shared): State<Arc<Shared>>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> Answer {
    shared.with(|org, _| {
        let m = machine(org, &app, &id)?;
        m.metadata_mut().remove(&key);
        Ok(StatusCode::NO_CONTENT.into_response())
    })
}

pub(crate) async fn list_volumes(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
) -> Answer {
    shared.with(|org, _| {
        need_app(org, &app)?;
        let volumes: Vec<Value> = org
            .volumes
            .values()
            .filter(|v| v.app == app && !v.destroyed)
            .map(render_volume)
            .collect();
        Ok(ok(Value::Array(volumes)))
    })
}

#[derive(serde::Deserialize)]
pub(crate) struct CreateVolume {
    name: Option<String>,
    region: Option<String>,
    size_gb: Option<u64>,
    encrypted: Option<bool>,
}

pub(crate) async fn create_volume(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    bytes: Bytes,
) -> Answer {
    let req: CreateVolume = body(&bytes)?;
    let name = req.name.unwrap_or_default();
    if !valid_name(&name, 30) || name.contains('-') {
        return Err(FlyError::bad_request(
            "volume name must be lowercase letters, numbers and underscores, at most 30",
        ));
    }
    let size_gb = req.size_gb.unwrap_or(1);
    if !(1..=500).contains(&size_gb) {
        return Err(FlyError::bad_request("size_gb must be between 1 and 500"));
    }
    let region = req.region.unwrap_or_else(|| "fra".to_owned());
    shared.with(|org, now| {
        need_app(org, &app)?;
        let id = org.new_volume(
            &app,
            &name,
            &region,
            size_gb,
            req.encrypted.unwrap_or(true),
            now,
        );
        let v = org
            .volume(&app, &id)
            .ok_or_else(FlyError::volume_not_found)?;
        Ok(ok(render_volume(v)))
    })
}

pub(crate) async fn get_volume(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, _| {
        need_app(org, &app)?;
        let v = org
            .volume(&app, &id)
            .ok_or_else(FlyError::volume_not_found)?;
        Ok(ok(render_volume(v)))
    })
}

/// Refused while a machine that is not destroyed has it attached.
pub(crate) async fn delete_volume(
    State(shared): State<Arc<Shared>>,
    Path((app, id)): Path<(String, String)>,
) -> Answer {
    shared.with(|org, _| {
        need_app(org, &app)?;
        let v = org
            .volume_mut(&app, &id)
            .ok_or_else(FlyError::volume_not_found)?;
        if let Some(machine) = &v.attached_machine {
            return Err(FlyError::precondition(format!(
                "volume {id} is attached to machine {machine}; destroy the machine first"
            )));
        }
        v.destroyed = true;
        Ok(ok(render_volume(v)))
    })
}
