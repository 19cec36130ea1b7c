//! Platform image releases. An Agent pins the current release at provisioning and keeps it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A registered platform release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    pub id: String,
    pub version: String,
    pub agent_version: String,
    /// `sha256:` and 64 hex digits: the digest of the image manifest the release was baked from.
    pub manifest_digest: String,
    /// Provider name (`hetzner`, `fly`, `local`) to that provider's reference for this release.
    pub refs: BTreeMap<String, String>,
    /// Environment variables every Agent provisioned on this release gets, pinned.
    pub env: BTreeMap<String, String>,
    pub created_at: Timestamp,
    /// Whether new Agents are provisioned on this release.
    pub current: bool,
}

/// Body of `POST /api/images`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterImage {
    /// Unique release name, 1 to 64 characters of `A-Z a-z 0-9 . _ + -`.
    pub version: String,
    pub agent_version: String,
    pub manifest_digest: String,
    /// At least one provider reference. `hetzner`: a numeric image id; `fly`: an image pinned by
    /// digest (`repo@sha256:…`); `local`: any label.
    pub refs: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Body of `PUT /api/images/current`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetCurrentImage {
    pub image_id: String,
}

/// Every registered release, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageList {
    pub items: Vec<Image>,
}
