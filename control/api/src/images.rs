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
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._+-]{1,64}$"))]
    pub version: String,
    /// The vm-agent version the release carries, 1 to 64 characters of `A-Z a-z 0-9 . _ + -`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._+-]{1,64}$"))]
    pub agent_version: String,
    /// `sha256:` and 64 lowercase hex digits.
    #[cfg_attr(feature = "openapi", schema(pattern = "^sha256:[0-9a-f]{64}$"))]
    pub manifest_digest: String,
    /// At least one provider reference. `hetzner`: a numeric image id; `fly`: an image pinned by
    /// digest (`repo@sha256:…`); `local`: any label.
    #[cfg_attr(feature = "openapi", schema(schema_with = image_refs_schema))]
    pub refs: BTreeMap<String, String>,
    /// At most 100 variables, names matching `[A-Z_][A-Z0-9_]*` (at most 128 characters),
    /// values of at most 4096 characters without NUL.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = image_env_schema))]
    pub env: BTreeMap<String, String>,
}

/// The schema of [`RegisterImage::refs`]: one reference per known provider, at least one.
#[cfg(feature = "openapi")]
fn image_refs_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let text = |pattern: &str, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(max))
            .pattern(Some(pattern))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "At least one provider reference. `hetzner`: a numeric image id (at most 20 digits); \
             `fly`: an image pinned by digest (`repository@sha256:<64 hex digits>`, at most 512 \
             characters); `local`: any label of 1 to 200 characters without control characters.",
        ))
        .property("hetzner", text("^[0-9]{1,20}$", 20))
        .property("fly", text("^[^@]+@sha256:[0-9A-Fa-f]{64}$", 512))
        .property("local", text(DISPLAY_TEXT, 200))
        .additional_properties(Some(
            AdditionalProperties::<utoipa::openapi::Schema>::FreeForm(false),
        ))
        .min_properties(Some(1))
        .build()
}

/// The schema of [`RegisterImage::env`].
#[cfg(feature = "openapi")]
fn image_env_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Environment variables every Agent on the release gets: at most 100, names matching \
             `[A-Z_][A-Z0-9_]*` (at most 128 characters), values of at most 4096 characters \
             without NUL.",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Z_][A-Z0-9_]{0,127}$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(4096))
                .pattern(Some("^[^\\u0000]*$")),
        ))
        .max_properties(Some(100))
        .build()
}

/// Text for humans as control takes it: no control characters, not only white space.
#[cfg(feature = "openapi")]
const DISPLAY_TEXT: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u001F\\u007F-\\u009F]*$";

/// Body of `PUT /api/images/current`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetCurrentImage {
    /// A registered release.
    #[cfg_attr(feature = "openapi", schema(pattern = "^img_[0-9A-Za-z]{26}$"))]
    pub image_id: String,
}

/// Every registered release, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageList {
    pub items: Vec<Image>,
}
