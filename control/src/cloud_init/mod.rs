//! Renders the cloud-init documents control hands to a server's first boot.
//!
//! An Agent's document carries only what is particular to that Agent, as 0600 files: its
//! identity, the single-use bootstrap token and, when it has one, its tunnel's token (the full
//! agent configuration joins with the image work); everything else is baked into the image. Documents are `#cloud-config` in YAML's JSON form, which cloud-init reads as YAML
//! and anything here can read back without a YAML parser: the local provider lays its VMs
//! out from the very document a cloud would receive.
//!
//! Never logs a document: it carries secrets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::providers::Secret;

/// Where the Agent's bootstrap token lands on its VM.
pub const BOOTSTRAP_TOKEN_PATH: &str = "/etc/vm-agent/bootstrap-token";
/// Where the Agent's tunnel token lands on its VM (cloudflared's `--token-file`).
pub const TUNNEL_TOKEN_PATH: &str = "/etc/vm-agent/tunnel-token";
/// Where the Agent's identity lands on its VM.
pub const IDENTITY_PATH: &str = "/etc/vm-agent/identity.json";
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
}

fn secret_file(path: &str, content: String) -> WriteFile {
    WriteFile {
        path: path.to_owned(),
        content,
        owner: "root:root".to_owned(),
        permissions: "0600".to_owned(),
    }
}

/// What an Agent's VM receives at first boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFirstBoot {
    pub identity: AgentIdentity,
    pub bootstrap_token: Secret,
    /// The token of the Agent's own tunnel, when tunnels are made per Agent.
    pub tunnel_token: Option<Secret>,
}

/// The first-boot document of an Agent's VM.
pub fn agent_document(first_boot: &AgentFirstBoot) -> Result<Secret, CloudInitError> {
    let mut write_files = vec![
        secret_file(IDENTITY_PATH, serde_json::to_string(&first_boot.identity)?),
        secret_file(BOOTSTRAP_TOKEN_PATH, first_boot.bootstrap_token.0.clone()),
    ];
    if let Some(token) = &first_boot.tunnel_token {
        write_files.push(secret_file(TUNNEL_TOKEN_PATH, token.0.clone()));
    }
    let document = Document { write_files };
    let text = format!("{HEADER}{}\n", serde_json::to_string_pretty(&document)?);
    if text.len() > MAX_USER_DATA {
        return Err(CloudInitError::TooLarge(text.len()));
    }
    Ok(Secret(text))
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

/// What an Agent's document delivers.
pub fn read_agent_document(document: &Secret) -> Result<AgentFirstBoot, CloudInitError> {
    let files = written_files(document)?;
    let identity = files
        .get(IDENTITY_PATH)
        .ok_or(CloudInitError::Missing(IDENTITY_PATH))?;
    let token = files
        .get(BOOTSTRAP_TOKEN_PATH)
        .ok_or(CloudInitError::Missing(BOOTSTRAP_TOKEN_PATH))?;
    Ok(AgentFirstBoot {
        identity: serde_json::from_str(identity)?,
        bootstrap_token: Secret(token.clone()),
        tunnel_token: files.get(TUNNEL_TOKEN_PATH).cloned().map(Secret),
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
            bootstrap_token: Secret("agb_t".to_owned()),
            tunnel_token: Some(Secret("tunnel-token-1".to_owned())),
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
        assert!(matches!(
            written_files(&Secret("{}".to_owned())),
            Err(CloudInitError::NotCloudConfig)
        ));
    }
}
