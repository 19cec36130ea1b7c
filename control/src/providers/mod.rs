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

/// The value of [`KIND_LABEL`] for resources of `kind`.
fn kind_label(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Agent => "agent",
        ResourceKind::PlainVm => "plain_vm",
    }
}

/// The labels every provider resource made for `kind` `id` carries.
pub fn resource_labels(kind: ResourceKind, id: &str) -> Labels {
    Labels::from([
        (KIND_LABEL.to_owned(), kind_label(kind).to_owned()),
        (ID_LABEL.to_owned(), id.to_owned()),
    ])
}

/// The selector of every provider resource made for resources of `kind` (its kind label
/// alone).
pub fn kind_selector(kind: ResourceKind) -> Labels {
    Labels::from([(KIND_LABEL.to_owned(), kind_label(kind).to_owned())])
}

/// The kind of our resource a provider resource with `labels` was made for, if its
/// [`KIND_LABEL`] names one.
pub fn labelled_kind(labels: &Labels) -> Option<ResourceKind> {
    let label = labels.get(KIND_LABEL)?;
    [ResourceKind::Agent, ResourceKind::PlainVm]
        .into_iter()
        .find(|kind| kind_label(*kind) == label)
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
/// how long the provider asked us to wait, when it said, and which value of the caller's it
/// refused, when it was one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider's code, such as Hetzner's `rate_limit_exceeded`.
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// The caller's field whose value was refused (such as a [`Placement`]'s `server_type`),
    /// when the refusal is of a value the caller gave; `None` for everything else, values
    /// from configuration included. A service answers a permanent refusal with a field as
    /// invalid input naming it ([`crate::error::Error::provider`]).
    pub field: Option<&'static str>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            message: message.into(),
            retry_after: None,
            field: None,
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

    /// The same error, as the refusal of the caller's `field`.
    #[must_use]
    pub fn on_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// The same error, for a caller who did not give the value it refused (an Agent's image
    /// is its release's, not a field of its request): it names no field, and the message
    /// says where the value came from (`origin`). Nothing changes for an error naming no
    /// field.
    #[must_use]
    pub fn not_the_callers(mut self, origin: &str) -> Self {
        if self.field.take().is_some() {
            self.message = format!("{} ({origin})", self.message);
        }
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

/// What a server is to be made from and where, as a preflight checks it: the provider's image
/// reference (an id, or a name such as Hetzner's `debian-12`), and the server type and
/// location, `None` for the cloud's configured ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement<'a> {
    pub image: &'a str,
    pub server_type: Option<&'a str>,
    pub location: Option<&'a str>,
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
    /// Checks, before anything is recorded, that servers can be made as `placement` says
    /// (the cloud knows the image, the server type and the location, and offers the type
    /// there), with the cloud's configured type and location where it names none. A refusal
    /// names the cause, and the placement's field (`image`, `server_type`, `location`) when
    /// it is of a value the placement gave; a refusal of a configured value names none. A
    /// provider that cannot answer is a transient error. Nothing to check by default.
    async fn preflight(&self, placement: &Placement<'_>) -> Result<(), ProviderError> {
        let _ = placement;
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
    /// Where the OS of the server it is attached to finds it (Hetzner's `linux_device`,
    /// `/dev/disk/by-id/scsi-0HC_Volume_<id>`), where the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
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
    /// Attaches the volume to the server (in its location), without mounting it, and returns
    /// once it is attached. Succeeds if it is attached there already; a volume attached to
    /// another server is a `Conflict`.
    async fn attach_volume(&self, id: &str, server_id: &str) -> Result<(), ProviderError>;
    /// Detaches the volume from its server and returns once it is detached. Succeeds if it is
    /// attached to none.
    async fn detach_volume(&self, id: &str) -> Result<(), ProviderError>;
}

/// Copying an Agent's slice (`/data/home-coder`) into a new Agent's, on a cloud that can do
/// it before the new Agent's VM first uses its slice. The copy keeps owners, modes,
/// timestamps, symlinks (never followed), hard links and extended attributes. The caller
/// makes sure the source's VM is off, so the copy is consistent.
#[async_trait]
pub trait Slices: Send + Sync + Debug {
    /// Copies the slice of server `from_server` so that the server created next for the
    /// Agent `to` (found by its labels) boots with it. Done again, it leaves the same copy,
    /// never a copy on top of a copy; once that server exists it changes nothing.
    async fn seed_slice(&self, from_server: &str, to: &str) -> Result<(), ProviderError>;

    /// Drops a copy made for the Agent `to` that no server took (its clone was given up).
    /// Nothing to drop is done.
    async fn discard_seed(&self, to: &str) -> Result<(), ProviderError>;
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
    /// Where the cloud copies an Agent's slice into a clone's itself (see [`Slices`]).
    pub slices: Option<Arc<dyn Slices>>,
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
    fn a_refusal_names_the_callers_field_only_when_the_value_was_theirs() {
        let plain = ProviderError::permanent("no such thing").with_code("invalid_input");
        assert_eq!(plain.field, None, "no constructor names a field");
        let callers = plain.clone().on_field("server_type");
        assert_eq!(callers.field, Some("server_type"));
        assert_eq!(
            callers.to_string(),
            "no such thing (invalid_input)",
            "the field changes nothing in the message"
        );
        let release = callers.not_the_callers("the current release's image");
        assert_eq!(release.field, None);
        assert_eq!(
            release.message,
            "no such thing (the current release's image)"
        );
        assert_eq!(
            plain.clone().not_the_callers("configured"),
            plain,
            "an error naming no field is left as it is"
        );
    }

    #[test]
    fn labels_name_our_resource() {
        let labels = resource_labels(ResourceKind::PlainVm, "pvm_1");
        assert_eq!(labels[KIND_LABEL], "plain_vm");
        assert_eq!(labels[ID_LABEL], "pvm_1");
        assert_eq!(labelled_kind(&labels), Some(ResourceKind::PlainVm));
        let agent = resource_labels(ResourceKind::Agent, "agt_1");
        assert_eq!(labelled_kind(&agent), Some(ResourceKind::Agent));
        assert_eq!(labelled_kind(&Labels::new()), None);
        let other = Labels::from([(KIND_LABEL.to_owned(), "volume".to_owned())]);
        assert_eq!(labelled_kind(&other), None);
        assert!(ServerStatus::Starting.is_on());
        assert!(!ServerStatus::Off.is_on());
        assert!(!ServerStatus::Stopping.is_on());
    }
}
