//! Hetzner Cloud API v1 (`https://api.hetzner.cloud/v1`): servers, firewalls and volumes, for
//! new Agents and for Plain VMs. Calls go through the shared retrying client
//! ([`super::http`]); this module reads Hetzner's error envelope and decides what each code
//! means, maps Hetzner's objects onto the capability traits, and follows actions.
//!
//! Hetzner has no idempotency keys: a repeated create is safe because names are deterministic
//! and unique per project (`uniqueness_error` is a `Conflict`, which a job step answers by
//! looking the resource up by our labels and adopting it). Operations answer with actions
//! that run on; server creation and power changes are not waited for here (the job's next
//! step reads the server's status, one call per look, paced by the job's backoff), while a
//! firewall's new rules are (the caller reads them back) and so is a server's deletion (its
//! volume and firewall are released only once it has finished).
//!
//! Files: [`wire`] (the JSON), [`servers`], [`firewalls`], [`volumes`], [`catalogue`] (what a
//! request is checked against before anything is recorded).

mod catalogue;
mod firewalls;
mod servers;
mod volumes;
mod wire;

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::http::{ApiClient, Passed, RetryPolicy, classify_status, status_kind};
use super::{ErrorKind, Labels, Page, ProviderError, Secret};
use crate::clock::SharedClock;

/// The name resources on Hetzner record.
pub const NAME: &str = "hetzner";

/// Hetzner's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.hetzner.cloud/v1";

/// Hetzner's page size limit.
const PER_PAGE: u32 = 50;

/// How to reach a Hetzner Cloud project and what to create servers as.
#[derive(Clone, Debug)]
pub struct HetznerConfig {
    pub base_url: String,
    /// A project API token with read and write rights.
    pub token: Secret,
    /// Where servers and volumes are created unless a request names a location.
    pub location: String,
    /// What servers are created as unless a request names a type.
    pub server_type: String,
    /// How often a followed action is looked at, at first (it doubles up to 8 times this).
    pub action_poll: Duration,
    /// How long an action may run before the call gives up on it (it may still finish).
    pub action_timeout: Duration,
    pub retry: RetryPolicy,
    /// The project's request budget an hour, unless Hetzner reports a smaller one
    /// (`RateLimit-Limit`).
    pub requests_per_hour: u32,
}

/// Hetzner's request budget: 3,600 an hour per project.
pub const REQUESTS_PER_HOUR: u32 = 3_600;

impl HetznerConfig {
    pub fn new(token: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            token,
            location: "fsn1".to_owned(),
            server_type: "cx22".to_owned(),
            action_poll: Duration::from_secs(1),
            action_timeout: Duration::from_mins(5),
            retry: RetryPolicy::default(),
            requests_per_hour: REQUESTS_PER_HOUR,
        }
    }
}

/// A Hetzner Cloud project as a cloud: servers, firewalls and volumes.
pub fn cloud(project: std::sync::Arc<Hetzner>) -> super::Cloud {
    super::Cloud {
        name: NAME,
        servers: project.clone(),
        firewalls: Some(project.clone()),
        volumes: Some(project),
        slices: None,
    }
}

/// A Hetzner Cloud project.
#[derive(Clone, Debug)]
pub struct Hetzner {
    api: ApiClient,
    config: HetznerConfig,
    /// Catalogue checks that passed (image, type, location).
    checked: Passed,
    /// The last `resource_limit_exceeded` Hetzner answered a create of each kind (its path:
    /// `/servers`, …) with, and until when new provisionings are refused with it (cleared when
    /// one of that kind is deleted).
    quota_spent:
        std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, (ProviderError, i64)>>>,
}

impl Hetzner {
    pub fn new(config: HetznerConfig, clock: SharedClock) -> Result<Self, ProviderError> {
        let api = ApiClient::new(
            NAME,
            &config.base_url,
            config.token.clone(),
            config.retry,
            classify,
            clock,
        )?;
        Ok(Self {
            api,
            config,
            checked: Passed::default(),
            quota_spent: std::sync::Arc::default(),
        })
    }

    /// The project's hourly request budget: the configured one, or the smaller one Hetzner's
    /// answers reported.
    pub fn requests_per_hour(&self) -> u32 {
        self.api
            .reported_limit()
            .map_or(self.config.requests_per_hour, |reported| {
                reported.min(self.config.requests_per_hour)
            })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ProviderError> {
        self.api.get(path).await
    }

    /// `GET path`, `None` for a 404.
    async fn find<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ProviderError> {
        match self.api.get(path).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ProviderError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ProviderError::permanent(format!("cannot encode a request: {e}")))?;
        let answer = self.api.call(method, path, Some(&body)).await;
        if let Err(e) = &answer {
            self.note_quota(path, e);
        }
        answer?.json()
    }

    async fn delete(&self, path: &str) -> Result<(), ProviderError> {
        self.api
            .call(reqwest::Method::DELETE, path, None)
            .await
            .map(|_| self.quota_freed(path))
    }

    /// Waits until every action in `ids` has finished, looking at all of them with one call
    /// each time; an action that ended in error is that error.
    async fn wait_actions(&self, ids: &[i64]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let query: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();
        let path = format!("/actions?{}", query.join("&"));
        let deadline = tokio::time::Instant::now() + self.config.action_timeout;
        let mut wait = self.config.action_poll;
        loop {
            let found: wire::Actions = self.get(&path).await?;
            if let Some(failed) = found.actions.iter().find(|a| a.status == "error") {
                let (code, message) = failed
                    .error
                    .as_ref()
                    .map_or(("action_failed", "the action failed"), |e| {
                        (e.code.as_str(), e.message.as_str())
                    });
                return Err(ProviderError::new(
                    action_error_kind(code),
                    format!(
                        "hetzner action {} ({}): {message}",
                        failed.id, failed.command
                    ),
                )
                .with_code(code));
            }
            if found.actions.len() >= ids.len()
                && found.actions.iter().all(|a| a.status == "success")
            {
                return Ok(());
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(ProviderError::transient(format!(
                    "hetzner actions {ids:?} still running after {:?}",
                    self.config.action_timeout
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(self.config.action_poll * 8);
        }
    }
}

/// What a failed action's code means for the job that waited on it.
fn action_error_kind(code: &str) -> ErrorKind {
    match code {
        "locked" | "conflict" | "timeout" | "server_error" | "unavailable" => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// What a Hetzner error code means (PROVIDERS.md lists them): what the official clients retry
/// is transient, a budget spent is rate limited, a taken name a conflict to adopt.
fn code_kind(code: &str, status: StatusCode) -> ErrorKind {
    match code {
        "rate_limit_exceeded" => ErrorKind::RateLimited,
        "uniqueness_error" => ErrorKind::Conflict,
        "not_found" => ErrorKind::NotFound,
        // `conflict` is Hetzner's "the resource changed meanwhile", not a taken name; `locked`
        // is another action running; `resource_in_use` waits for a server being deleted.
        "conflict" | "locked" | "resource_in_use" | "server_error" | "bad_gateway" | "timeout"
        | "unavailable" | "maintenance" => ErrorKind::Transient,
        "invalid_input"
        | "json_error"
        | "unauthorized"
        | "token_readonly"
        | "forbidden"
        | "resource_limit_exceeded"
        | "resource_unavailable"
        | "protected"
        | "service_error"
        | "unsupported_error"
        | "placement_error" => ErrorKind::Permanent,
        _ => status_kind(status),
    }
}

/// Reads Hetzner's error envelope: the code decides the kind, the message (with the fields
/// `invalid_input` names) is what the dashboard is shown.
fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let Ok(envelope) = serde_json::from_slice::<wire::ErrorEnvelope>(body) else {
        return classify_status(status, headers, body);
    };
    let error = envelope.error;
    let mut message = format!("hetzner: {}", error.message);
    let fields: Vec<String> = error
        .details
        .unwrap_or_default()
        .fields
        .into_iter()
        .map(|f| format!("{}: {}", f.name, f.messages.join(", ")))
        .collect();
    if !fields.is_empty() {
        message = format!("{message} ({})", fields.join("; "));
    }
    ProviderError::new(code_kind(&error.code, status), message).with_code(error.code)
}

/// Hetzner's ids are integers; ours are their text. Anything else names nothing there.
fn numeric(id: &str, what: &str) -> Result<i64, ProviderError> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ProviderError::not_found(format!("{what} {}", id.escape_debug())))
}

/// `label_selector=k==v,k2==v2`, URL-encoded: every label of `selector`, exactly.
fn label_query(selector: &Labels) -> String {
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}=={v}")).collect();
    form_urlencoded::Serializer::new(String::new())
        .append_pair("label_selector", &selector.join(","))
        .finish()
}

/// The query of one page of a listing by labels (`page` is what the last page said is next).
fn list_query(selector: &Labels, page: Option<&str>) -> Result<String, ProviderError> {
    let page = match page {
        None => 1,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ProviderError::permanent(format!("not a page: {}", text.escape_debug()))
        })?,
    };
    Ok(format!(
        "{}&page={page}&per_page={PER_PAGE}",
        label_query(selector)
    ))
}

fn page<T, W>(items: Vec<W>, meta: &wire::Meta, convert: impl Fn(W) -> T) -> Page<T> {
    Page {
        items: items.into_iter().map(convert).collect(),
        next: meta.pagination.next_page.map(|n| n.to_string()),
    }
}

#[cfg(test)]
mod tests;
