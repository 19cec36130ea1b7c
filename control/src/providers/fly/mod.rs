//! Fly Machines API v1 (`https://api.machines.dev/v1`), for the legacy cohort of Agents that
//! already runs on Fly (new Agents go to the default cloud). An operator imports such an Agent
//! (`POST /api/agents/import`); from then on starting, stopping, destroying it and reading its
//! state go through here, behind [`Servers`]. Calls go through the shared retrying client
//! ([`super::http`]); this module reads Fly's error body (`{"error", "status"}`) and decides
//! what it means.
//!
//! **Provider ids.** Fly's paths need the app as well as the machine, so a Fly server's id is
//! `<app>/<machine id>` (app names have no `/`). One app holds one Agent: its machine and the
//! machine's volume.
//!
//! **Labels.** Fly keeps a machine's metadata (`config.metadata`, keys of letters, digits, `_`,
//! `-`, `.`), and our labels' keys have a `/`: `control/kind` and `control/id` are kept as
//! `control_kind` and `control_id` ([`metadata_key`]). An import writes them, so the
//! reconciler and the sweeper see an imported machine as any other Agent's server.
//!
//! **Listing costs** one call for the organization's apps (`GET /apps?org_slug=`) and one per
//! app (`GET /apps/{app}/machines`) on each page; a page covers [`APPS_PER_PAGE`] apps. Fly
//! has no filter by metadata, so the selector is applied here.
//!
//! **Power.** `power_on` is `start`, then `wait` for `started`; `shutdown` is `stop` with
//! `SIGTERM` and `power_off` is `stop` with `SIGKILL`, each then `wait` for `stopped`. A `wait`
//! that times out (408) is not an error: the job's next step reads the state again.
//! `delete_server` destroys the machine (forced), waits for `destroyed`, deletes the app's
//! volumes and then the app; whatever is gone already is done, so it can run twice. Should the
//! app hold another live machine, only ours and the volume it mounted go.

mod wire;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::http::{ApiClient, RetryPolicy, classify_status, status_kind};
use super::{
    ErrorKind, ID_LABEL, KIND_LABEL, Labels, Page, ProviderError, Secret, Server, ServerSpec,
    ServerStatus, Servers,
};
use crate::clock::SharedClock;

pub use wire::{Machine, Volume};

/// The name resources on Fly record.
pub const NAME: &str = "fly";

/// Fly's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.machines.dev/v1";

/// Apps looked through per page of a listing (one call each).
pub const APPS_PER_PAGE: usize = 50;

/// The code a `wait` that ran out of time is given (Fly's 408 `deadline_exceeded`).
const WAIT_TIMED_OUT: &str = "deadline_exceeded";

/// How to reach the Fly organization the legacy Agents run in.
#[derive(Clone, Debug)]
pub struct FlyConfig {
    pub base_url: String,
    /// An API token of the organization (sent as `Authorization: Bearer …`).
    pub token: Secret,
    /// The organization whose apps are listed.
    pub org_slug: String,
    /// How long one `wait` call may hold (Fly allows 60 s; keep it under the retry policy's
    /// timeout per attempt).
    pub wait_timeout: Duration,
    pub retry: RetryPolicy,
}

impl FlyConfig {
    pub fn new(token: Secret, org_slug: impl Into<String>) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            token,
            org_slug: org_slug.into(),
            wait_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
        }
    }
}

/// A Fly organization as a cloud: machines (with their volumes) only.
pub fn cloud(org: std::sync::Arc<Fly>) -> super::Cloud {
    super::Cloud {
        name: NAME,
        servers: org,
        firewalls: None,
        volumes: None,
        slices: None,
    }
}

/// A Fly organization's machines.
#[derive(Clone, Debug)]
pub struct Fly {
    api: ApiClient,
    config: FlyConfig,
}

/// The Fly metadata key a label is kept under.
pub fn metadata_key(label: &str) -> String {
    label.replace('/', "_")
}

/// Our labels from a machine's metadata: `control_kind` and `control_id` back to theirs, any
/// other key as it is.
fn labels_of(metadata: Option<&std::collections::BTreeMap<String, String>>) -> Labels {
    let ours = [KIND_LABEL, ID_LABEL];
    metadata
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let key = ours
                .iter()
                .find(|label| metadata_key(label) == *k)
                .map_or_else(|| k.clone(), |label| (*label).to_owned());
            (key, v.clone())
        })
        .collect()
}

/// Fly's machine states onto ours.
pub fn status(state: &str) -> ServerStatus {
    match state {
        "starting" => ServerStatus::Starting,
        "started" => ServerStatus::Running,
        "stopping" | "suspending" => ServerStatus::Stopping,
        "created" | "stopped" | "suspended" | "failed" | "launch_failed" => ServerStatus::Off,
        "destroying" | "destroyed" => ServerStatus::Deleting,
        "replacing" | "updating" | "restarting" => ServerStatus::Rebuilding,
        "creating" => ServerStatus::Initializing,
        _ => ServerStatus::Unknown,
    }
}

/// Our id of a machine: `<app>/<machine id>`.
pub fn server_id(app: &str, machine: &str) -> String {
    format!("{app}/{machine}")
}

/// The app and the machine of a server id; anything else names nothing at Fly.
fn split(id: &str) -> Result<(&str, &str), ProviderError> {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match id.split_once('/') {
        Some((app, machine)) if valid(app) && valid(machine) => Ok((app, machine)),
        _ => Err(ProviderError::not_found(format!(
            "fly machine {}",
            id.escape_debug()
        ))),
    }
}

fn server(app: &str, m: wire::Machine) -> Server {
    Server {
        id: server_id(app, &m.id),
        name: m.name,
        status: status(&m.state),
        image: m.config.image,
        labels: labels_of(m.config.metadata.as_ref()),
        ipv4: None,
        ipv6: m.private_ip,
    }
}

impl Fly {
    pub fn new(config: FlyConfig, clock: SharedClock) -> Result<Self, ProviderError> {
        let api = ApiClient::new(
            NAME,
            &config.base_url,
            config.token.clone(),
            config.retry,
            classify,
            clock,
        )?;
        Ok(Self { api, config })
    }

    pub fn org_slug(&self) -> &str {
        &self.config.org_slug
    }

    /// `GET path`, `None` for a 404.
    async fn find<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ProviderError> {
        match self.api.get(path).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(), ProviderError> {
        self.api
            .call(Method::POST, path, Some(body))
            .await
            .map(drop)
    }

    async fn delete(&self, path: &str) -> Result<(), ProviderError> {
        self.api.call(Method::DELETE, path, None).await.map(drop)
    }

    /// Machine `machine` of app `app`, `None` when Fly has no such machine (or app).
    pub async fn machine(
        &self,
        app: &str,
        machine: &str,
    ) -> Result<Option<wire::Machine>, ProviderError> {
        split(&server_id(app, machine))?;
        self.find(&format!("/apps/{app}/machines/{machine}")).await
    }

    /// Volume `volume` of app `app`, `None` when Fly has no such volume (or app).
    pub async fn volume(
        &self,
        app: &str,
        volume: &str,
    ) -> Result<Option<wire::Volume>, ProviderError> {
        split(&server_id(app, volume))?;
        self.find(&format!("/apps/{app}/volumes/{volume}")).await
    }

    /// Writes `labels` into the machine's metadata (one call per label), so listings by label
    /// find it.
    pub async fn label(
        &self,
        app: &str,
        machine: &str,
        labels: &Labels,
    ) -> Result<(), ProviderError> {
        for (key, value) in labels {
            let path = format!(
                "/apps/{app}/machines/{machine}/metadata/{}",
                metadata_key(key)
            );
            self.post(&path, &json!({ "value": value })).await?;
        }
        Ok(())
    }

    /// Waits (one call, up to the configured timeout) for the machine to reach `state`;
    /// `Ok(false)` when the time ran out first.
    async fn wait(&self, app: &str, machine: &str, state: &str) -> Result<bool, ProviderError> {
        let path = format!(
            "/apps/{app}/machines/{machine}/wait?state={state}&timeout={}",
            self.config.wait_timeout.as_secs().clamp(1, 60)
        );
        match self.api.call(Method::GET, &path, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.code.as_deref() == Some(WAIT_TIMED_OUT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `stop` with `signal`, then `wait` for `stopped`; done at once if it is not on.
    async fn stop(&self, id: &str, signal: &str, timeout: &str) -> Result<(), ProviderError> {
        let (app, machine) = split(id)?;
        let Some(found) = self.machine(app, machine).await? else {
            return Err(ProviderError::not_found(format!("fly machine {id}")));
        };
        if !status(&found.state).is_on() && found.state != "stopping" {
            return Ok(());
        }
        self.post(
            &format!("/apps/{app}/machines/{machine}/stop"),
            &json!({"signal": signal, "timeout": timeout}),
        )
        .await?;
        self.wait(app, machine, "stopped").await.map(drop)
    }

    /// The apps of the organization, by name.
    async fn app_names(&self) -> Result<Vec<String>, ProviderError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("org_slug", &self.config.org_slug)
            .finish();
        let found: wire::Apps = self.api.get(&format!("/apps?{query}")).await?;
        let mut names: Vec<String> = found.apps.into_iter().map(|a| a.name).collect();
        names.sort();
        Ok(names)
    }
}

#[async_trait]
impl Servers for Fly {
    /// New Agents are not made on Fly: the legacy cohort is imported, never created.
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError> {
        Err(ProviderError::permanent(format!(
            "fly holds only imported legacy Agents; {} cannot be created there",
            spec.name
        )))
    }

    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError> {
        let Ok((app, machine)) = split(id) else {
            return Ok(None);
        };
        Ok(self
            .machine(app, machine)
            .await?
            .filter(|m| m.state != "destroyed")
            .map(|m| server(app, m)))
    }

    async fn list_servers(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Server>, ProviderError> {
        let first = match page {
            None => 0,
            Some(text) => text.parse::<usize>().map_err(|_| {
                ProviderError::permanent(format!("not a page: {}", text.escape_debug()))
            })?,
        };
        let apps = self.app_names().await?;
        let mut items = Vec::new();
        for app in apps.iter().skip(first).take(APPS_PER_PAGE) {
            let machines: Option<Vec<wire::Machine>> =
                self.find(&format!("/apps/{app}/machines")).await?;
            for m in machines.into_iter().flatten() {
                if m.state == "destroyed" {
                    continue;
                }
                let found = server(app, m);
                if selector.iter().all(|(k, v)| found.labels.get(k) == Some(v)) {
                    items.push(found);
                }
            }
        }
        let next = first + APPS_PER_PAGE;
        Ok(Page {
            items,
            next: (next < apps.len()).then(|| next.to_string()),
        })
    }

    async fn power_on(&self, id: &str) -> Result<(), ProviderError> {
        let (app, machine) = split(id)?;
        let Some(found) = self.machine(app, machine).await? else {
            return Err(ProviderError::not_found(format!("fly machine {id}")));
        };
        if found.state != "started" {
            self.post(&format!("/apps/{app}/machines/{machine}/start"), &json!({}))
                .await?;
        }
        self.wait(app, machine, "started").await.map(drop)
    }

    async fn shutdown(&self, id: &str) -> Result<(), ProviderError> {
        self.stop(id, "SIGTERM", "30s").await
    }

    async fn power_off(&self, id: &str) -> Result<(), ProviderError> {
        self.stop(id, "SIGKILL", "1s").await
    }

    async fn delete_server(&self, id: &str) -> Result<(), ProviderError> {
        let (app, machine) = split(id)?;
        let path = format!("/apps/{app}/machines/{machine}");
        let mounted: Vec<String> = self
            .machine(app, machine)
            .await?
            .and_then(|m| m.config.mounts)
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.volume)
            .collect();
        super::deleted(self.delete(&format!("{path}?force=true")).await)?;
        match self.wait(app, machine, "destroyed").await {
            Ok(true) => {}
            Ok(false) => {
                return Err(ProviderError::transient(format!(
                    "fly machine {id} is still being destroyed"
                )));
            }
            Err(e) if e.kind == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The app is the Agent's alone; should it hold another machine, only ours goes, with
        // the volume it mounted.
        let Some(others) = self
            .find::<Vec<wire::Machine>>(&format!("/apps/{app}/machines"))
            .await?
        else {
            return Ok(());
        };
        let shared = others
            .iter()
            .any(|m| m.id != machine && m.state != "destroyed");
        let volumes: Vec<wire::Volume> = self
            .find(&format!("/apps/{app}/volumes"))
            .await?
            .unwrap_or_default();
        for volume in volumes
            .iter()
            .filter(|v| !shared || mounted.contains(&v.id))
        {
            super::deleted(
                self.delete(&format!("/apps/{app}/volumes/{}", volume.id))
                    .await,
            )?;
        }
        if shared {
            return Ok(());
        }
        super::deleted(self.delete(&format!("/apps/{app}")).await)
    }
}

/// What Fly's `status` code, else the HTTP status, means.
fn kind(code: Option<&str>, status: StatusCode) -> ErrorKind {
    match (code, status.as_u16()) {
        (Some("name_taken"), _) => ErrorKind::Conflict,
        // No room now, or a machine not in the state the action needs (starting while
        // stopping, …): later.
        (Some("insufficient_capacity" | "volume_placement_capacity"), _) | (_, 412) => {
            ErrorKind::Transient
        }
        (_, 401 | 403) => ErrorKind::Permanent,
        _ => status_kind(status),
    }
}

/// Reads Fly's error body: its `status` (or the HTTP status) decides the kind, its `error` is
/// what the dashboard is shown. A `wait`'s 408 is a timeout of that wait, not a failure.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let Ok(error) = serde_json::from_slice::<wire::ErrorBody>(body) else {
        return classify_status(status, headers, body);
    };
    if status == StatusCode::REQUEST_TIMEOUT {
        return ProviderError::permanent(format!("fly: {}", error.error)).with_code(WAIT_TIMED_OUT);
    }
    let code = error.status.filter(|c| !c.is_empty());
    let made = ProviderError::new(
        kind(code.as_deref(), status),
        format!("fly: {} (HTTP {})", error.error, status.as_u16()),
    );
    match code {
        Some(code) => made.with_code(code),
        None => made,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flys_errors_become_kinds_with_flys_words() {
        let e = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            br#"{"error":"insufficient resources","status":"insufficient_capacity"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert_eq!(e.code.as_deref(), Some("insufficient_capacity"));
        assert!(e.message.contains("insufficient resources"), "{e}");
        let taken = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            br#"{"error":"Name has already been taken","status":"name_taken"}"#,
        );
        assert_eq!(taken.kind, ErrorKind::Conflict);
        let cases = [
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Conflict),
            (429, ErrorKind::RateLimited),
            (503, ErrorKind::Transient),
            (412, ErrorKind::Transient),
            (401, ErrorKind::Permanent),
            (400, ErrorKind::Permanent),
        ];
        for (code, want) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            let e = classify(status, &HeaderMap::new(), br#"{"error":"x"}"#);
            assert_eq!(e.kind, want, "{code}");
        }
        let bare = classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"<html>");
        assert_eq!(bare.kind, ErrorKind::Transient);
    }

    #[test]
    fn ids_states_and_labels_map_onto_ours() {
        assert_eq!(split("app-1/0801abcd").unwrap(), ("app-1", "0801abcd"));
        assert_eq!(split("nope").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(split("a/../b").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(status("started"), ServerStatus::Running);
        assert_eq!(status("suspended"), ServerStatus::Off);
        assert!(!status("stopping").is_on());
        let metadata = std::collections::BTreeMap::from([
            ("control_kind".to_owned(), "agent".to_owned()),
            ("fly_platform_version".to_owned(), "v2".to_owned()),
        ]);
        let labels = labels_of(Some(&metadata));
        assert_eq!(labels[KIND_LABEL], "agent");
        assert_eq!(labels["fly_platform_version"], "v2");
    }
}
