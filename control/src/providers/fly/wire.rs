//! The JSON of Fly's Machines API that control reads: machines, volumes, apps and the error
//! body. Only the fields control uses; Fly sends more.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct ErrorBody {
    pub error: String,
    /// Fly's classification, when it gives one (`insufficient_capacity`, `name_taken`, …).
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub state: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub config: MachineConfig,
    #[serde(default)]
    pub image_ref: Option<ImageRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct MachineConfig {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mounts: Option<Vec<Mount>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Mount {
    pub volume: String,
    #[serde(default)]
    pub path: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ImageRef {
    #[serde(default)]
    pub digest: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub size_gb: u32,
    #[serde(default)]
    pub attached_machine_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Apps {
    #[serde(default)]
    pub apps: Vec<App>,
}

#[derive(Debug, Deserialize)]
pub(super) struct App {
    pub name: String,
}
