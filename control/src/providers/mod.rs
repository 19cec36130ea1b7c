//! Where resources come from. Clouds differ in what they offer, so the seam is a few
//! capability traits rather than one VM trait: [`Servers`], [`Firewalls`], [`Volumes`] and
//! [`Tunnels`]. A cloud implements what it has (Hetzner: servers, firewalls, volumes; Fly:
//! machines and volumes; Cloudflare: tunnels); [`local`] implements all of them on this
//! machine. Which clouds exist comes from configuration ([`crate::config::ProvidersSection`]). [`Providers`] is the set this control plane was configured with.
//!
//! Every call is keyed so that it can be repeated: a job may run a step again after a crash
//! or on another replica. Everything we create carries [`resource_labels`], so a step looks
//! its resource up by label before creating it, and a sweeper can find what nothing owns.
//! Deleting what is gone already is `NotFound`, which a step treats as done.
//!
//! May call: nothing of control's but its own configuration; the services call in here.

pub mod cloudflare;
pub mod fly;
pub mod hetzner;
pub mod http;
pub mod local;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use control_api::usage::ResourceKind;
use serde::{Deserialize, Serialize};

/// The environment variables provider API tokens may come from (the names the providers' own
/// tools read), when the configuration names no token file. No child control starts inherits
/// them.
pub const TOKEN_ENV: [&str; 3] = ["HCLOUD_TOKEN", "CLOUDFLARE_API_TOKEN", "FLY_API_TOKEN"];

/// Text that must not reach logs or debug output (tokens, user data carrying them).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Labels as clouds keep them: keys and values of `[A-Za-z0-9._-]`, keys with an optional
/// `prefix/`.
pub type Labels = BTreeMap<String, String>;

/// The label naming the kind of our resource a provider resource belongs to.
pub const KIND_LABEL: &str = "control/kind";
/// The label naming our resource's id.
pub const ID_LABEL: &str = "control/id";

/// The labels every provider resource made for `kind` `id` carries.
pub fn resource_labels(kind: ResourceKind, id: &str) -> Labels {
    let kind = match kind {
        ResourceKind::Agent => "agent",
        ResourceKind::PlainVm => "plain_vm",
    };
    Labels::from([
        (KIND_LABEL.to_owned(), kind.to_owned()),
        (ID_LABEL.to_owned(), id.to_owned()),
    ])
}

/// What kind of failure a provider call met, which decides what a job does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Worth retrying soon (timeouts, 5xx, a resource locked by another action).
    Transient,
    /// The provider's request budget is spent; retry after `retry_after`.
    RateLimited,
    /// Retrying will not help (invalid input, a quota, an image that does not exist).
    Permanent,
    /// The provider has no such resource.
    NotFound,
    /// The resource exists already (a uniqueness conflict): adopt it.
    Conflict,
}

/// A provider call that failed: what kind of failure, the provider's own code and message,
/// and how long the provider asked us to wait, when it said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider's code, such as Hetzner's `rate_limit_exceeded`.
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("the provider has no {}", what.into()),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after,
            ..Self::new(ErrorKind::RateLimited, message)
        }
    }

    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::RateLimited)
    }
}

/// A delete's result, with "not found" (gone already) as done: what makes a delete safe to
/// repeat.
pub fn deleted<T>(result: Result<T, ProviderError>) -> Result<(), ProviderError> {
    match result {
        Err(e) if e.kind != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A server's state as its provider reports it (Hetzner's statuses; Fly's map onto them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStatus {
    Initializing,
    Starting,
    Running,
    Stopping,
    Off,
    Deleting,
    Migrating,
    Rebuilding,
    Unknown,
}

impl ServerStatus {
    /// Whether the machine is powered on, or on its way there; the provider bills it as on.
    pub fn is_on(self) -> bool {
        matches!(
            self,
            Self::Initializing
                | Self::Starting
                | Self::Running
                | Self::Migrating
                | Self::Rebuilding
        )
    }
}

/// A server to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    /// The provider's image reference (an image id, a snapshot, a digest).
    pub image: String,
    pub server_type: Option<String>,
    pub location: Option<String>,
    pub labels: Labels,
    /// The cloud-init document delivered to its first boot.
    pub user_data: Option<Secret>,
    pub firewall_ids: Vec<String>,
    pub volume_ids: Vec<String>,
}

/// A server as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub status: ServerStatus,
    pub image: String,
    pub labels: Labels,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
}

/// One page of a listing, and where the next begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[async_trait]
pub trait Servers: Send + Sync + Debug {
    /// Checks, before anything is recorded, that servers can be made from `image` as this
    /// cloud is configured (it knows the image, the server type and the location). A refusal
    /// names the cause; a provider that cannot answer is a transient error. Nothing to check
    /// by default.
    async fn preflight(&self, image: &str) -> Result<(), ProviderError> {
        let _ = image;
        Ok(())
    }

    /// Creates the server and returns it once the provider accepted it (it may still be
    /// starting). A server whose name is taken is a `Conflict`.
    async fn create_server(&self, spec: &ServerSpec) -> Result<Server, ProviderError>;
    async fn get_server(&self, id: &str) -> Result<Option<Server>, ProviderError>;
    /// The servers carrying every label of `selector`, a page at a time.
    async fn list_servers(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Server>, ProviderError>;
    /// Powers the server on. Succeeds if it is on already.
    async fn power_on(&self, id: &str) -> Result<(), ProviderError>;
    /// Asks the OS to shut down (ACPI). Succeeds if it is off already.
    async fn shutdown(&self, id: &str) -> Result<(), ProviderError>;
    /// Cuts the power. Succeeds if it is off already.
    async fn power_off(&self, id: &str) -> Result<(), ProviderError>;
    async fn delete_server(&self, id: &str) -> Result<(), ProviderError>;

    /// The calls an hour the cloud allows this project, where it counts them so (Hetzner:
    /// 3,600); `None` where it does not. Background work paces itself to a share of it.
    fn requests_per_hour(&self) -> Option<u32> {
        None
    }
}

/// Which way a firewall rule faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
}

/// One firewall rule, in Hetzner's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    pub direction: Direction,
    /// `tcp`, `udp`, `icmp`, `esp` or `gre`.
    pub protocol: String,
    /// A port or a range `low-high`, for tcp and udp only.
    pub port: Option<String>,
    pub source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSpec {
    pub name: String,
    pub labels: Labels,
    pub rules: Vec<FirewallRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub rules: Vec<FirewallRule>,
    /// The servers it is applied to.
    pub servers: Vec<String>,
}

#[async_trait]
pub trait Firewalls: Send + Sync + Debug {
    async fn create_firewall(&self, spec: &FirewallSpec) -> Result<Firewall, ProviderError>;
    async fn get_firewall(&self, id: &str) -> Result<Option<Firewall>, ProviderError>;
    async fn list_firewalls(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Firewall>, ProviderError>;
    /// Replaces the whole ruleset.
    async fn set_rules(&self, id: &str, rules: &[FirewallRule]) -> Result<(), ProviderError>;
    async fn apply_to_server(&self, id: &str, server_id: &str) -> Result<(), ProviderError>;
    async fn delete_firewall(&self, id: &str) -> Result<(), ProviderError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    pub size_gb: u32,
    pub location: Option<String>,
    pub labels: Labels,
    /// The filesystem to format it with, such as `ext4`.
    pub format: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size_gb: u32,
    pub labels: Labels,
    /// The server it is attached to.
    pub server: Option<String>,
}

#[async_trait]
pub trait Volumes: Send + Sync + Debug {
    async fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, ProviderError>;
    async fn get_volume(&self, id: &str) -> Result<Option<Volume>, ProviderError>;
    async fn list_volumes(
        &self,
        selector: &Labels,
        page: Option<&str>,
    ) -> Result<Page<Volume>, ProviderError>;
    async fn delete_volume(&self, id: &str) -> Result<(), ProviderError>;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    pub id: String,
    pub name: String,
}

#[async_trait]
pub trait Tunnels: Send + Sync + Debug {
    /// Checks, before anything is recorded, that tunnels and their DNS records can be made
    /// (the credentials reach the account and the zone). Nothing to check by default.
    async fn preflight(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Creates a remotely managed tunnel. A name in use is a `Conflict`.
    async fn create_tunnel(&self, name: &str) -> Result<Tunnel, ProviderError>;
    async fn find_tunnel(&self, name: &str) -> Result<Option<Tunnel>, ProviderError>;
    /// The token `cloudflared tunnel run` needs.
    async fn tunnel_token(&self, id: &str) -> Result<Secret, ProviderError>;
    /// Routes `hostname` through the tunnel to `service` (its ingress and its DNS record).
    async fn route(&self, id: &str, hostname: &str, service: &str) -> Result<(), ProviderError>;
    /// Deletes the tunnels named `name` and the DNS record routing `hostname` through them;
    /// what is gone already is done, so it may be repeated after any failure.
    async fn delete_tunnel(&self, name: &str, hostname: &str) -> Result<(), ProviderError>;
}

/// One cloud's capabilities, under the name resources record.
#[derive(Clone, Debug)]
pub struct Cloud {
    pub name: &'static str,
    pub servers: Arc<dyn Servers>,
    pub firewalls: Option<Arc<dyn Firewalls>>,
    pub volumes: Option<Arc<dyn Volumes>>,
}

/// The providers this control plane can reach: clouds by name, the one new Agents go to,
/// and where tunnels come from.
#[derive(Clone, Debug)]
pub struct Providers {
    default: &'static str,
    clouds: BTreeMap<&'static str, Cloud>,
    tunnels: Option<Arc<dyn Tunnels>>,
    /// The Fly organization legacy Agents are imported from, when configured.
    fly: Option<Arc<fly::Fly>>,
}

impl Providers {
    /// A set whose default (for new resources) is `default`.
    pub fn new(default: Cloud) -> Self {
        let name = default.name;
        Self {
            default: name,
            clouds: BTreeMap::from([(name, default)]),
            tunnels: None,
            fly: None,
        }
    }

    /// Adds a cloud existing resources may live on (such as legacy Fly Machines).
    #[must_use]
    pub fn with(mut self, cloud: Cloud) -> Self {
        self.clouds.insert(cloud.name, cloud);
        self
    }

    #[must_use]
    pub fn with_tunnels(mut self, tunnels: Arc<dyn Tunnels>) -> Self {
        self.tunnels = Some(tunnels);
        self
    }

    /// Adds the Fly organization of the legacy cohort: a cloud its imported Agents live on,
    /// and where imports look their machines up.
    #[must_use]
    pub fn with_fly(mut self, org: Arc<fly::Fly>) -> Self {
        self.clouds.insert(fly::NAME, fly::cloud(org.clone()));
        self.fly = Some(org);
        self
    }

    pub fn fly(&self) -> Option<&Arc<fly::Fly>> {
        self.fly.as_ref()
    }

    pub fn default_cloud(&self) -> &Cloud {
        // The default is inserted by `new` and never removed.
        &self.clouds[self.default]
    }

    pub fn get(&self, name: &str) -> Option<&Cloud> {
        self.clouds.get(name)
    }

    pub fn clouds(&self) -> impl Iterator<Item = &Cloud> {
        self.clouds.values()
    }

    pub fn tunnels(&self) -> Option<&Arc<dyn Tunnels>> {
        self.tunnels.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_the_providers_code_and_who_may_retry() {
        let limited = ProviderError::rate_limited(
            "hourly request budget spent",
            Some(Duration::from_secs(7)),
        )
        .with_code("rate_limit_exceeded");
        assert_eq!(
            limited.to_string(),
            "hourly request budget spent (rate_limit_exceeded)"
        );
        assert!(limited.is_retryable());
        assert_eq!(limited.retry_after, Some(Duration::from_secs(7)));
        assert!(!ProviderError::permanent("invalid image").is_retryable());
        assert_eq!(
            ProviderError::not_found("server 42").to_string(),
            "the provider has no server 42"
        );
    }

    #[test]
    fn labels_name_our_resource() {
        let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
        assert_eq!(labels[KIND_LABEL], "plain_vm");
        assert_eq!(labels[ID_LABEL], "pvm_1");
        assert!(ServerStatus::Starting.is_on());
        assert!(!ServerStatus::Off.is_on());
        assert!(!ServerStatus::Stopping.is_on());
    }
}
