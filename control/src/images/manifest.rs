//! The manifest `image/build` writes next to each baked disk image (`manifest.json`), read
//! and checked before its release is registered: `control image register`.
//!
//! Only what registering needs is checked closely (the format, that the image is an Agent
//! release, its release and vm-agent versions, the form of every `sha256`); fields this
//! module does not know are tolerated, so the recipe can add to the manifest without a new
//! control. The release's `manifest_digest` is the SHA-256 of the file's exact bytes, never
//! of a re-encoding. Never changes anything: it reads one file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

/// The manifest format this control reads.
pub const FORMAT: u64 = 1;

/// What registering takes from a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The release version (the image's `version` in the API).
    pub release: String,
    /// The vm-agent baked in (the image's `agent_version`).
    pub agent_version: String,
    /// `sha256:` and the lowercase hex SHA-256 of the manifest file's bytes.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the image manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the image manifest is not JSON of the expected shape: {field}: {message}")]
    Shape { field: String, message: String },
    #[error("the image manifest is refused: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(
        "the image manifest is of a plain image (variant \"plain\"), which has no vm-agent: \
         it is not an Agent release and cannot be registered"
    )]
    Plain,
}

#[derive(Deserialize)]
struct Raw {
    format: Option<u64>,
    variant: Option<String>,
    release: Option<String>,
    vm_agent: Option<Component>,
    cloudflared: Option<Cloudflared>,
    image: Option<DiskImage>,
}

#[derive(Deserialize)]
struct Component {
    version: Option<String>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct Cloudflared {
    version: Option<String>,
    sha256: Option<String>,
    source: Option<String>,
}

#[derive(Deserialize)]
struct DiskImage {
    sha256: Option<String>,
}

/// Reads and checks the manifest at `path`.
pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&bytes)
}

/// Checks a manifest's bytes.
pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let mut reader = serde_json::Deserializer::from_slice(bytes);
    let raw: Raw = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let field = e.path().to_string();
        ManifestError::Shape {
            field: if field == "." {
                "(document)".to_owned()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })?;
    let invalid = |field, message: &str| ManifestError::Invalid {
        field,
        message: message.to_owned(),
    };
    match raw.format {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(invalid(
                "format",
                &format!("is {other}; this control reads format {FORMAT}"),
            ));
        }
        None => return Err(invalid("format", "is missing")),
    }
    match raw.variant.as_deref() {
        Some("agent") => {}
        Some("plain") => return Err(ManifestError::Plain),
        Some(other) => {
            return Err(invalid(
                "variant",
                &format!("is {other:?}; must be \"agent\""),
            ));
        }
        None => return Err(invalid("variant", "is missing")),
    }
    let release = present("release", raw.release)?;
    let vm_agent = raw
        .vm_agent
        .ok_or_else(|| invalid("vm_agent", "is missing (an Agent image has a vm-agent)"))?;
    let agent_version = present("vm_agent.version", vm_agent.version)?;
    sha256("vm_agent.sha256", vm_agent.sha256.as_deref())?;
    if let Some(cloudflared) = raw.cloudflared {
        present("cloudflared.version", cloudflared.version)?;
        sha256("cloudflared.sha256", cloudflared.sha256.as_deref())?;
        match cloudflared.source.as_deref() {
            Some("package" | "stand-in") => {}
            _ => {
                return Err(invalid(
                    "cloudflared.source",
                    "must be \"package\" or \"stand-in\"",
                ));
            }
        }
    }
    if let Some(image) = raw.image {
        sha256("image.sha256", image.sha256.as_deref())?;
    }
    Ok(Manifest {
        release,
        agent_version,
        digest: format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes))),
    })
}

fn present(field: &'static str, value: Option<String>) -> Result<String, ManifestError> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ManifestError::Invalid {
            field,
            message: "is missing or empty".to_owned(),
        }),
    }
}

fn sha256(field: &'static str, value: Option<&str>) -> Result<(), ManifestError> {
    let ok = value.is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(ManifestError::Invalid {
            field,
            message: "must be 64 lowercase hex digits".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn agent_manifest() -> Value {
        json!({
            "format": 1,
            "variant": "agent",
            "release": "2026.12.0",
            "suite": "bookworm",
            "architecture": "amd64",
            "vm_agent": {"version": "0.1.0", "sha256": "a".repeat(64)},
            "cloudflared": {"version": "2025.8.0", "sha256": "b".repeat(64), "source": "package"},
            "packages": [{"name": "bash", "version": "5.2.15-2+b7"}],
            "image": {"file": "disk.raw", "format": "raw", "bytes": 2_147_483_648_u64, "sha256": "c".repeat(64)},
            "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "root=LABEL=root ro"},
            "a_field_from_a_newer_recipe": {"anything": [1, 2]}
        })
    }

    fn parse_value(value: &Value) -> Result<Manifest, ManifestError> {
        parse(serde_json::to_string_pretty(value).unwrap().as_bytes())
    }

    /// The field an `Invalid` or `Shape` refusal names.
    fn refused_field(value: &Value) -> String {
        match parse_value(value) {
            Err(ManifestError::Invalid { field, .. }) => field.to_owned(),
            Err(ManifestError::Shape { field, .. }) => field,
            other => panic!("not refused naming a field: {other:?}"),
        }
    }

    #[test]
    fn an_agent_manifest_gives_its_release_agent_version_and_the_digest_of_its_bytes() {
        let text = serde_json::to_string_pretty(&agent_manifest()).unwrap();
        let manifest = parse(text.as_bytes()).unwrap();
        assert_eq!(manifest.release, "2026.12.0");
        assert_eq!(manifest.agent_version, "0.1.0");
        assert_eq!(
            manifest.digest,
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            )
        );
        // The same content encoded differently is a different file: a different digest.
        let compact = serde_json::to_string(&agent_manifest()).unwrap();
        assert_ne!(parse(compact.as_bytes()).unwrap().digest, manifest.digest);
    }

    #[test]
    fn a_plain_image_is_not_an_agent_release() {
        let mut plain = agent_manifest();
        plain["variant"] = json!("plain");
        plain["vm_agent"] = Value::Null;
        plain["cloudflared"] = Value::Null;
        let error = parse_value(&plain).unwrap_err();
        assert!(matches!(error, ManifestError::Plain), "{error}");
        assert!(error.to_string().contains("not an Agent release"));
    }

    #[test]
    fn each_check_names_its_field() {
        let cases: [(&str, Value, &str); 10] = [
            ("format", json!(2), "format"),
            ("format", json!("1"), "format"),
            ("variant", json!("desktop"), "variant"),
            ("release", Value::Null, "release"),
            ("release", json!(""), "release"),
            ("vm_agent", Value::Null, "vm_agent"),
            (
                "vm_agent",
                json!({"sha256": "a".repeat(64)}),
                "vm_agent.version",
            ),
            (
                "vm_agent",
                json!({"version": "0.1.0", "sha256": "A".repeat(64)}),
                "vm_agent.sha256",
            ),
            (
                "cloudflared",
                json!({"version": "1", "sha256": "b".repeat(63), "source": "package"}),
                "cloudflared.sha256",
            ),
            ("image", json!({"sha256": 7}), "image.sha256"),
        ];
        for (key, value, field) in cases {
            let mut manifest = agent_manifest();
            manifest[key] = value;
            assert_eq!(refused_field(&manifest), field, "{key}");
        }
        let mut source = agent_manifest();
        source["cloudflared"]["source"] = json!("downloaded");
        assert_eq!(refused_field(&source), "cloudflared.source");
        let mut missing = agent_manifest();
        missing.as_object_mut().unwrap().remove("format");
        assert_eq!(refused_field(&missing), "format");
        assert!(matches!(
            parse(b"{\"format\": 1,"),
            Err(ManifestError::Shape { .. })
        ));
        assert!(matches!(parse(b"[1]"), Err(ManifestError::Shape { .. })));
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let error = read(Path::new("/nonexistent/manifest.json")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/manifest.json"),
            "{error}"
        );
    }
}
