//! Renders the cloud-init documents control hands to a server's first boot, from the
//! templates in the repository's `cloud-init/` (compiled in).
//!
//! An Agent's document carries only what is particular to that Agent, as 0600 files: its
//! `agent.toml` (its identity and control's public URL), the single-use bootstrap token and,
//! when it has one, its tunnel's token; everything else is baked into the image. Documents
//! are `#cloud-config` in YAML's JSON form, which cloud-init reads as YAML and anything here
//! can read back without a YAML parser: the local provider lays its VMs out from the very
//! document a cloud would receive. A template is filled by replacing each string that is
//! exactly `{{name}}` with its value, so a value is escaped by the JSON serializer and can
//! never change the document's shape.
//!
//! Never logs a document: it carries secrets.

mod plain_vm;

use std::collections::BTreeMap;

use control_api::agent_config::{AgentToml, CloneFromToml, CloudflaredToml};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::Secret;

pub use plain_vm::{
    PlainVmDelivery, PlainVmFirstBoot, one_time_password, plain_vm_document, read_plain_vm_document,
};

/// The Agent's template (`cloud-init/agent.cloud-config`).
const AGENT_TEMPLATE: &str = include_str!("../../../cloud-init/agent.cloud-config");

/// Where the Agent's bootstrap token lands on its VM.
pub const BOOTSTRAP_TOKEN_PATH: &str = "/etc/vm-agent/bootstrap-token";
/// Where the Agent's tunnel token lands on its VM (cloudflared's `--token-file`).
pub const TUNNEL_TOKEN_PATH: &str = "/etc/vm-agent/tunnel-token";
/// Where the Agent's vm-agent configuration lands on its VM.
pub const AGENT_TOML_PATH: &str = "/etc/vm-agent/agent.toml";
/// Hetzner's limit on user data.
pub const MAX_USER_DATA: usize = 32 * 1024;

const HEADER: &str = "#cloud-config\n";

/// Who the Agent is, as its VM learns it at first boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub image_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    write_files: Vec<WriteFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WriteFile {
    path: String,
    content: String,
    owner: String,
    permissions: String,
    /// Cloud-init's content encodings (`b64`, `gzip`, ...); this module writes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("the document is not #cloud-config")]
    NotCloudConfig,
    #[error("the document cannot be read: {0}")]
    Unreadable(#[from] serde_json::Error),
    #[error("the document has no {0}")]
    Missing(&'static str),
    #[error("the document is {0} bytes, over the 32 KiB user data limit")]
    TooLarge(usize),
    #[error("the template names {0}, which nothing fills")]
    UnknownPlaceholder(String),
    #[error("the agent configuration cannot be written or read: {0}")]
    AgentToml(String),
    #[error("no one-time password could be made: {0}")]
    Random(String),
    #[error("write_files path {0:?} is not an absolute path inside the VM")]
    PathEscapes(String),
    #[error("write_files {path}: permissions {permissions:?} are not an octal mode")]
    Permissions { path: String, permissions: String },
    #[error("write_files {path}: encoding {encoding:?} is not delivered here")]
    Encoding { path: String, encoding: String },
    #[error("cannot deliver {}: {source}", path.display())]
    Deliver {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What an Agent's VM receives at first boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFirstBoot {
    pub identity: AgentIdentity,
    /// Where its vm-agent reaches control.
    pub control_url: String,
    pub bootstrap_token: Secret,
    /// The token of the Agent's own tunnel, when tunnels are made per Agent.
    pub tunnel_token: Option<Secret>,
    /// A clone whose slice is copied on its VM: where from.
    pub clone_from: Option<CloneFromToml>,
}

/// The first-boot document of an Agent's VM.
pub fn agent_document(first_boot: &AgentFirstBoot) -> Result<Secret, CloudInitError> {
    let insecure = first_boot.control_url.starts_with("http://");
    let config = AgentToml {
        agent_id: first_boot.identity.agent_id.clone(),
        image_version: first_boot.identity.image_version.clone(),
        control_url: first_boot.control_url.clone(),
        allow_insecure_control: insecure.then_some(true),
        bootstrap_token_file: Some(BOOTSTRAP_TOKEN_PATH.into()),
        cloudflared: CloudflaredToml {
            token_file: first_boot
                .tunnel_token
                .as_ref()
                .map(|_| TUNNEL_TOKEN_PATH.into()),
            ..CloudflaredToml::default()
        },
        clone_from: first_boot.clone_from.clone(),
        ..AgentToml::default()
    };
    let agent_toml = config
        .to_toml()
        .map_err(|e| CloudInitError::AgentToml(e.to_string()))?;
    let values = BTreeMap::from([
        ("agent_toml", Some(Value::String(agent_toml))),
        (
            "bootstrap_token",
            Some(Value::String(first_boot.bootstrap_token.0.clone())),
        ),
        (
            "tunnel_token",
            first_boot
                .tunnel_token
                .as_ref()
                .map(|t| Value::String(t.0.clone())),
        ),
    ]);
    render(AGENT_TEMPLATE, &values)
}

/// What fills a template's placeholders, by name; `None`: left out.
type Values<'a> = BTreeMap<&'a str, Option<Value>>;

/// Fills `template`: every string that is exactly `{{name}}` becomes `values[name]` (any JSON
/// value). Where a placeholder has no value, the array item holding it (such as a
/// `write_files` entry), or the object member that is that placeholder, is left out.
fn render(template: &str, values: &Values<'_>) -> Result<Secret, CloudInitError> {
    let body = template
        .strip_prefix(HEADER)
        .ok_or(CloudInitError::NotCloudConfig)?;
    let mut document: Value = serde_json::from_str(body)?;
    prune(&mut document, values);
    fill(&mut document, values)?;
    let text = format!("{HEADER}{}\n", serde_json::to_string_pretty(&document)?);
    if text.len() > MAX_USER_DATA {
        return Err(CloudInitError::TooLarge(text.len()));
    }
    Ok(Secret(text))
}

/// Whether `value` is a placeholder that has no value.
fn unfilled(value: &Value, values: &Values<'_>) -> bool {
    value
        .as_str()
        .and_then(placeholder)
        .is_some_and(|name| matches!(values.get(name), Some(None)))
}

/// Whether `value` holds, anywhere, a placeholder that has no value.
fn holds_unfilled(value: &Value, values: &Values<'_>) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| holds_unfilled(item, values)),
        Value::Object(fields) => fields.values().any(|field| holds_unfilled(field, values)),
        other => unfilled(other, values),
    }
}

fn prune(value: &mut Value, values: &Values<'_>) {
    match value {
        Value::Array(items) => {
            items.retain(|item| !holds_unfilled(item, values));
            for item in items.iter_mut() {
                prune(item, values);
            }
        }
        Value::Object(fields) => {
            fields.retain(|_, field| !unfilled(field, values));
            for field in fields.values_mut() {
                prune(field, values);
            }
        }
        _ => {}
    }
}

/// The name of a placeholder `{{name}}`.
fn placeholder(text: &str) -> Option<&str> {
    text.strip_prefix("{{")?.strip_suffix("}}")
}

fn fill(value: &mut Value, values: &Values<'_>) -> Result<(), CloudInitError> {
    match value {
        Value::String(text) => {
            if let Some(name) = placeholder(text) {
                let Some(Some(filled)) = values.get(name) else {
                    return Err(CloudInitError::UnknownPlaceholder(text.clone()));
                };
                *value = filled.clone();
            }
        }
        Value::Array(items) => {
            for item in items {
                fill(item, values)?;
            }
        }
        Value::Object(fields) => {
            for field in fields.values_mut() {
                fill(field, values)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The files a document written by this module delivers, by path.
pub fn written_files(document: &Secret) -> Result<BTreeMap<String, String>, CloudInitError> {
    let body = document
        .0
        .strip_prefix(HEADER)
        .ok_or(CloudInitError::NotCloudConfig)?;
    let document: Document = serde_json::from_str(body)?;
    Ok(document
        .write_files
        .into_iter()
        .map(|file| (file.path, file.content))
        .collect())
}

/// Does what cloud-init's `write_files` does with `document`, with `root` standing for the
/// VM's `/`: each file is written (replacing one that is there) at its path under `root`, its
/// content byte for byte, with the mode its `permissions` state; missing directories are made
/// 0755, as cloud-init makes them. A path that is not absolute or has a `..` (or `.`) in it is
/// refused before anything is written, as is a symbolic link where a file or directory goes:
/// nothing lands outside `root`. Owners are not changed (files belong to whoever runs this;
/// the document's owner is root on a real VM). Returns the paths written, in the document's
/// order.
pub fn deliver(
    document: &Secret,
    root: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, CloudInitError> {
    use std::path::Component;
    let body = document
        .0
        .strip_prefix(HEADER)
        .ok_or(CloudInitError::NotCloudConfig)?;
    let document: Document = serde_json::from_str(body)?;
    let mut planned = Vec::new();
    for file in &document.write_files {
        let path = std::path::Path::new(&file.path);
        let mut components = path.components();
        let inside = components.next() == Some(Component::RootDir)
            && components.clone().next().is_some()
            && components.all(|c| matches!(c, Component::Normal(_)))
            && !file.path.split('/').any(|part| part == "." || part == "..");
        if !inside {
            return Err(CloudInitError::PathEscapes(file.path.clone()));
        }
        let permissions = file.permissions.trim_start_matches("0o");
        let mode = u32::from_str_radix(permissions, 8)
            .ok()
            .filter(|mode| *mode <= 0o7777 && !permissions.is_empty())
            .ok_or_else(|| CloudInitError::Permissions {
                path: file.path.clone(),
                permissions: file.permissions.clone(),
            })?;
        if let Some(encoding) = file.encoding.as_deref().filter(|e| *e != "text/plain") {
            return Err(CloudInitError::Encoding {
                path: file.path.clone(),
                encoding: encoding.to_owned(),
            });
        }
        let relative = path.strip_prefix("/").unwrap_or(path);
        planned.push((
            root.join(relative),
            relative.to_owned(),
            mode,
            &file.content,
        ));
    }
    let mut written = Vec::new();
    for (target, relative, mode, content) in planned {
        let failed = |source| CloudInitError::Deliver {
            path: target.clone(),
            source,
        };
        make_dirs(root, relative.parent().unwrap_or(std::path::Path::new(""))).map_err(failed)?;
        write_file(&target, mode, content.as_bytes()).map_err(failed)?;
        written.push(target);
    }
    Ok(written)
}

/// Makes each directory of `relative` under `root` (0755), refusing a symbolic link on the way.
fn make_dirs(root: &std::path::Path, relative: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root)?;
    let mut at = root.to_owned();
    for part in relative.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is in the way (not a directory)",
                    at.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new().mode(0o755).create(&at)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `content` to `path` with `mode`, never through a symbolic link: to a new file beside
/// it, renamed over it.
fn write_file(path: &std::path::Path, mode: u32, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.cloud-init"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&temp)?;
    file.write_all(content)?;
    // The mode exactly as stated, whatever the umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// What an Agent's document delivers.
pub fn read_agent_document(document: &Secret) -> Result<AgentFirstBoot, CloudInitError> {
    let files = written_files(document)?;
    let config = files
        .get(AGENT_TOML_PATH)
        .ok_or(CloudInitError::Missing(AGENT_TOML_PATH))?;
    let config: AgentToml =
        toml::from_str(config).map_err(|e| CloudInitError::AgentToml(e.to_string()))?;
    let token = files
        .get(BOOTSTRAP_TOKEN_PATH)
        .ok_or(CloudInitError::Missing(BOOTSTRAP_TOKEN_PATH))?;
    Ok(AgentFirstBoot {
        identity: AgentIdentity {
            agent_id: config.agent_id,
            image_version: config.image_version,
        },
        control_url: config.control_url,
        bootstrap_token: Secret(token.clone()),
        tunnel_token: files.get(TUNNEL_TOKEN_PATH).cloned().map(Secret),
        clone_from: config.clone_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_document_reads_back_and_keeps_its_secrets_private() {
        let identity = AgentIdentity {
            agent_id: "agt_1".to_owned(),
            image_version: "2026.11.0".to_owned(),
        };
        let first_boot = AgentFirstBoot {
            identity,
            control_url: "https://control.example.test".to_owned(),
            bootstrap_token: Secret("agb_t".to_owned()),
            tunnel_token: Some(Secret("tunnel-token-1".to_owned())),
            clone_from: None,
        };
        let document = agent_document(&first_boot).unwrap();
        assert!(document.0.starts_with("#cloud-config\n"));
        assert_eq!(read_agent_document(&document).unwrap(), first_boot);
        let without = AgentFirstBoot {
            tunnel_token: None,
            ..first_boot
        };
        let document = agent_document(&without).unwrap();
        assert_eq!(read_agent_document(&document).unwrap(), without);
        let parsed: serde_json::Value =
            serde_json::from_str(document.0.strip_prefix(HEADER).unwrap()).unwrap();
        let files = parsed["write_files"].as_array().unwrap();
        assert!(files.iter().all(|f| f["permissions"] == "0600"));
        assert_eq!(format!("{document:?}"), "[redacted]");
        assert_eq!(files.len(), 2, "no tunnel token, no entry for it");
        assert!(matches!(
            written_files(&Secret("{}".to_owned())),
            Err(CloudInitError::NotCloudConfig)
        ));
    }

    #[test]
    fn a_value_cannot_change_the_documents_shape() {
        let values: Values<'_> = BTreeMap::from([(
            "x",
            Some(Value::String("\"}], \"runcmd\": [\"rm -rf /\"".to_owned())),
        )]);
        let document = render(
            "#cloud-config\n{\"write_files\": [{\"content\": \"{{x}}\"}]}",
            &values,
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(document.0.strip_prefix(HEADER).unwrap()).unwrap();
        assert_eq!(parsed.as_object().unwrap().len(), 1);
        assert_eq!(
            Some(&parsed["write_files"][0]["content"]),
            values["x"].as_ref()
        );
        assert!(matches!(
            render("#cloud-config\n{\"a\": \"{{nobody}}\"}", &values),
            Err(CloudInitError::UnknownPlaceholder(_))
        ));
    }

    #[test]
    fn the_agent_toml_is_what_vm_agent_reads_with_an_https_control() {
        let first_boot = AgentFirstBoot {
            identity: AgentIdentity {
                agent_id: "agt_2".to_owned(),
                image_version: "2026.12.0".to_owned(),
            },
            control_url: "https://control.example.test".to_owned(),
            bootstrap_token: Secret("agb_u".to_owned()),
            tunnel_token: Some(Secret("t".to_owned())),
            clone_from: None,
        };
        let files = written_files(&agent_document(&first_boot).unwrap()).unwrap();
        let config: AgentToml = toml::from_str(&files[AGENT_TOML_PATH]).unwrap();
        assert_eq!(config.control_url, "https://control.example.test");
        assert_eq!(config.allow_insecure_control, None);
        assert_eq!(
            config.bootstrap_token_file.as_deref(),
            Some(std::path::Path::new(BOOTSTRAP_TOKEN_PATH))
        );
        assert_eq!(
            config.cloudflared.token_file.as_deref(),
            Some(std::path::Path::new(TUNNEL_TOKEN_PATH))
        );
        assert_eq!(files.len(), 3);
    }

    fn agent_first_boot() -> AgentFirstBoot {
        AgentFirstBoot {
            identity: AgentIdentity {
                agent_id: "agt_3".to_owned(),
                image_version: "2026.12.0".to_owned(),
            },
            control_url: "https://control.example.test".to_owned(),
            bootstrap_token: Secret("agb_v".to_owned()),
            tunnel_token: Some(Secret("tunnel-token-3".to_owned())),
            clone_from: None,
        }
    }

    #[test]
    fn delivery_writes_each_file_verbatim_under_the_root_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let document = agent_document(&agent_first_boot()).unwrap();
        let written = deliver(&document, &root).unwrap();
        let files = written_files(&document).unwrap();
        assert_eq!(written.len(), 3);
        assert_eq!(
            written,
            [AGENT_TOML_PATH, BOOTSTRAP_TOKEN_PATH, TUNNEL_TOKEN_PATH]
                .map(|path| root.join(path.trim_start_matches('/')))
        );
        for (path, content) in &files {
            let at = root.join(path.trim_start_matches('/'));
            assert_eq!(std::fs::read(&at).unwrap(), content.as_bytes(), "{path}");
            let mode = std::fs::metadata(&at).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o600, "{path}");
        }
        let etc = std::fs::metadata(root.join("etc/vm-agent")).unwrap();
        assert_eq!(etc.permissions().mode() & 0o777, 0o755);
        // Delivered again (a retried first boot): the same files, nothing left beside them.
        deliver(&document, &root).unwrap();
        let names: Vec<_> = std::fs::read_dir(root.join("etc/vm-agent"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    /// A document made by hand around one `write_files` entry.
    fn one_file(path: &str, permissions: &str) -> Secret {
        Secret(format!(
            "{HEADER}{}",
            serde_json::json!({"write_files": [
                {"path": "/etc/ok", "content": "ok", "owner": "root:root", "permissions": "0644"},
                {"path": path, "content": "x", "owner": "root:root", "permissions": permissions},
            ]})
        ))
    }

    #[test]
    fn delivery_refuses_paths_outside_the_root_and_writes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vm/root");
        for path in [
            "/etc/../../escaped",
            "../escaped",
            "etc/relative",
            "/",
            "/etc/./x",
            "",
        ] {
            let error = deliver(&one_file(path, "0600"), &root).unwrap_err();
            assert!(
                matches!(&error, CloudInitError::PathEscapes(p) if p == path),
                "{path}: {error}"
            );
        }
        assert!(
            !root.exists(),
            "nothing was written, the good entry included"
        );
        assert!(!dir.path().join("escaped").exists());
        for permissions in ["rw", "", "0o10000", "9"] {
            assert!(matches!(
                deliver(&one_file("/etc/x", permissions), &root),
                Err(CloudInitError::Permissions { .. })
            ));
        }
        // A symbolic link where a directory goes is not followed out of the root.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        assert!(matches!(
            deliver(&one_file("/etc/x", "0600"), &root),
            Err(CloudInitError::Deliver { .. })
        ));
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Modes as stated, an octal string with or without its leading zero.
        std::fs::remove_file(root.join("etc")).unwrap();
        deliver(&one_file("/srv/run.sh", "755"), &root).unwrap();
        let mode = std::fs::metadata(root.join("srv/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        let ok = std::fs::metadata(root.join("etc/ok"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(ok & 0o7777, 0o644);
    }
}
