//! Where Agents' VMs come from. Each cloud is one module behind the [`Provider`] trait; the
//! lifecycle jobs call it and record only what it confirms.
//!
//! Every method is idempotent and keyed by our Agent id, because a job may run again after a
//! crash or on another replica: creating twice must adopt the first VM, destroying a VM that is
//! gone already succeeds.

pub mod local;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

/// Text that must not reach logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a VM is booted from, as pinned on the Agent at provisioning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub agent_id: String,
    pub name: String,
    /// The provider's reference for the pinned image release.
    pub image_ref: String,
    pub env: BTreeMap<String, String>,
    /// For `create`: the single-use token the VM's agent trades for its credential (cloud-init
    /// delivers it on a real cloud).
    pub bootstrap_token: Option<Secret>,
}

/// Power state as the provider reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    Running,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying later (rate limits, capacity, timeouts, 5xx).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (bad image reference, quota, invalid request).
    #[error("{0}")]
    Permanent(String),
    /// The provider has no VM with this id.
    #[error("the provider has no VM {0}")]
    NotFound(String),
}

#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// The name Agents record, such as `hetzner`.
    fn name(&self) -> &'static str;

    /// Creates the VM for `spec` and powers it on, or adopts the one an earlier attempt made.
    /// Returns the provider's id for it once it runs.
    async fn create(&self, spec: &VmSpec) -> Result<String, ProviderError>;

    /// Powers the VM on from its pinned image. Succeeds if it already runs.
    async fn start(&self, provider_id: &str, spec: &VmSpec) -> Result<(), ProviderError>;

    /// Shuts the VM down. Succeeds if it is already off.
    async fn stop(&self, provider_id: &str) -> Result<(), ProviderError>;

    /// Deletes the VM, or the one an earlier attempt created for this Agent when `provider_id`
    /// is unknown. Succeeds if there is none.
    async fn destroy(&self, provider_id: Option<&str>, agent_id: &str)
    -> Result<(), ProviderError>;

    /// The VM's power state, `None` if it does not exist.
    async fn power_state(&self, provider_id: &str) -> Result<Option<PowerState>, ProviderError>;
}

/// The providers this control plane can reach, by name, and the one new Agents go to.
#[derive(Clone, Debug)]
pub struct Providers {
    default: &'static str,
    by_name: BTreeMap<&'static str, Arc<dyn Provider>>,
}

impl Providers {
    /// A registry whose default (for new Agents) is `default`.
    pub fn new(default: Arc<dyn Provider>) -> Self {
        let mut by_name = BTreeMap::new();
        let name = default.name();
        by_name.insert(name, default);
        Self {
            default: name,
            by_name,
        }
    }

    /// Adds a provider existing Agents may live on (such as legacy Fly Machines).
    #[must_use]
    pub fn with(mut self, provider: Arc<dyn Provider>) -> Self {
        self.by_name.insert(provider.name(), provider);
        self
    }

    pub fn default_provider(&self) -> &Arc<dyn Provider> {
        // The default is inserted by `new` and never removed.
        &self.by_name[self.default]
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }
}
