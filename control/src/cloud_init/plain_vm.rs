//! A Plain VM's one-shot first boot (`cloud-init/plain-vm.cloud-config`): its hostname (and
//! fqdn), the chosen Vault keys for the image's default user, and, when asked, a one-time
//! password that must be changed at first login — cloud-init receives only its SHA-512 crypt
//! hash. Nothing else: no packages, no commands, no files, no agent of ours.
//!
//! [`read_plain_vm_document`] reads such a document back, as the local provider's simulated
//! Plain VM receives it, and refuses anything else (an Agent's document, a key the template
//! does not have, a password that is not a SHA-512 crypt hash).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{CloudInitError, HEADER, render};
use crate::providers::Secret;

/// The Plain VM template.
const TEMPLATE: &str = include_str!("../../../cloud-init/plain-vm.cloud-config");

/// Characters of a one-time password: no look-alikes (0/O, 1/l/I), nothing a keyboard layout
/// or a console moves around.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Its length: about 115 bits.
const PASSWORD_LEN: usize = 20;

/// What a Plain VM's first boot sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainVmFirstBoot {
    /// An RFC 1123 host name; with dots, the first label is the hostname and the whole the fqdn.
    pub hostname: String,
    /// The image's default user (`root` on Hetzner's images).
    pub default_user: String,
    /// OpenSSH public key lines for the default user.
    pub ssh_keys: Vec<String>,
    /// The one-time password's SHA-512 crypt hash (`$6$…`), when one was asked for.
    pub password_hash: Option<String>,
}

/// What a Plain VM's document delivers, read back (the password hash itself is not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainVmDelivery {
    /// The first label of the host name.
    pub hostname: String,
    /// The whole host name, when it has dots.
    pub fqdn: Option<String>,
    /// The OpenSSH public key lines for the default user.
    pub ssh_keys: Vec<String>,
    /// Whether a one-time password (its hash) is set for the default user.
    pub password_set: bool,
}

/// The Plain VM template's keys, and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainVmBody {
    hostname: String,
    #[serde(default)]
    fqdn: Option<String>,
    #[serde(default)]
    ssh_authorized_keys: Option<Vec<String>>,
    #[serde(default)]
    chpasswd: Option<Chpasswd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Chpasswd {
    expire: bool,
    users: Vec<ChpasswdUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChpasswdUser {
    #[expect(dead_code, reason = "read to refuse a user without a name")]
    name: String,
    password: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A document that has the template's keys but not what [`plain_vm_document`] puts in them.
fn not_plain(message: &str) -> CloudInitError {
    CloudInitError::Unreadable(<serde_json::Error as serde::de::Error>::custom(message))
}

/// What a Plain VM's document delivers: exactly the template's keys, a hostname that is the
/// fqdn's first label, and at most one password, a SHA-512 crypt hash that expires at first
/// login. Anything else is refused, an Agent's document included.
pub fn read_plain_vm_document(document: &Secret) -> Result<PlainVmDelivery, CloudInitError> {
    let body = document
        .0
        .strip_prefix(HEADER)
        .ok_or(CloudInitError::NotCloudConfig)?;
    let body: PlainVmBody = serde_json::from_str(body)?;
    if body.hostname.is_empty() || body.hostname.contains('.') {
        return Err(not_plain("the hostname must be one label"));
    }
    if let Some(fqdn) = &body.fqdn
        && fqdn.split('.').next() != Some(body.hostname.as_str())
    {
        return Err(not_plain("the fqdn must begin with the hostname"));
    }
    let password_set = match &body.chpasswd {
        None => false,
        Some(chpasswd) => {
            let [user] = chpasswd.users.as_slice() else {
                return Err(not_plain("chpasswd must set exactly one user's password"));
            };
            if !chpasswd.expire {
                return Err(not_plain("chpasswd must expire the one-time password"));
            }
            if user.kind != "hash" || !user.password.starts_with("$6$") {
                return Err(not_plain(
                    "chpasswd must carry a SHA-512 crypt hash, never a password",
                ));
            }
            true
        }
    };
    Ok(PlainVmDelivery {
        hostname: body.hostname,
        fqdn: body.fqdn,
        ssh_keys: body.ssh_authorized_keys.unwrap_or_default(),
        password_set,
    })
}

/// A new random one-time password and its SHA-512 crypt hash. The password is for the caller's
/// eyes only, once; only the hash goes into the document, and control keeps neither.
pub fn one_time_password() -> Result<(Secret, String), CloudInitError> {
    let mut random = [0_u8; PASSWORD_LEN];
    getrandom::fill(&mut random).map_err(|e| CloudInitError::Random(e.to_string()))?;
    // 256 is not a multiple of the alphabet's size; the bias this leaves (a few percent on
    // some characters) costs well under a bit of the password's ~115.
    let password: String = random
        .iter()
        .map(|b| char::from(PASSWORD_ALPHABET[usize::from(*b) % PASSWORD_ALPHABET.len()]))
        .collect();
    let hash = sha_crypt::sha512_simple(&password, &sha_crypt::Sha512Params::default())
        .map_err(|e| CloudInitError::Random(format!("{e:?}")))?;
    Ok((Secret(password), hash))
}

/// The first-boot document of a Plain VM.
pub fn plain_vm_document(first_boot: &PlainVmFirstBoot) -> Result<Secret, CloudInitError> {
    let short = first_boot
        .hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let fqdn = first_boot
        .hostname
        .contains('.')
        .then(|| Value::String(first_boot.hostname.clone()));
    let keys = (!first_boot.ssh_keys.is_empty()).then(|| json!(first_boot.ssh_keys));
    let chpasswd = first_boot.password_hash.as_ref().map(|hash| {
        json!({
            "expire": true,
            "users": [{"name": first_boot.default_user, "password": hash, "type": "hash"}],
        })
    });
    let values = BTreeMap::from([
        ("hostname", Some(Value::String(short))),
        ("fqdn", fqdn),
        ("ssh_authorized_keys", keys),
        ("chpasswd", chpasswd),
    ]);
    render(TEMPLATE, &values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(document: &Secret) -> Value {
        serde_json::from_str(document.0.strip_prefix("#cloud-config\n").unwrap()).unwrap()
    }

    #[test]
    fn a_document_has_its_hostname_keys_and_only_the_hash_of_its_password() {
        let (password, hash) = one_time_password().unwrap();
        assert_eq!(password.0.len(), PASSWORD_LEN);
        assert!(password.0.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        assert!(hash.starts_with("$6$"), "{hash}");
        assert!(sha_crypt::sha512_check(&password.0, &hash).is_ok());
        assert!(sha_crypt::sha512_check("not it", &hash).is_err());
        let document = plain_vm_document(&PlainVmFirstBoot {
            hostname: "web-1.example.com".to_owned(),
            default_user: "root".to_owned(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice".to_owned()],
            password_hash: Some(hash.clone()),
        })
        .unwrap();
        assert!(!document.0.contains(&password.0), "no plaintext");
        let body = body(&document);
        assert_eq!(body["hostname"], "web-1");
        assert_eq!(body["fqdn"], "web-1.example.com");
        assert_eq!(
            body["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice"
        );
        assert_eq!(body["chpasswd"]["expire"], true);
        assert_eq!(body["chpasswd"]["users"][0]["password"], hash.as_str());

        let bare = plain_vm_document(&PlainVmFirstBoot {
            hostname: "db".to_owned(),
            default_user: "root".to_owned(),
            ssh_keys: Vec::new(),
            password_hash: None,
        })
        .unwrap();
        let keys: Vec<String> = body_keys(&bare);
        assert_eq!(keys, ["hostname"]);
    }

    #[test]
    fn a_document_reads_back_as_what_it_delivers() {
        let (_, hash) = one_time_password().unwrap();
        let full = PlainVmFirstBoot {
            hostname: "web-1.example.com".to_owned(),
            default_user: "root".to_owned(),
            ssh_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice".to_owned(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF bob".to_owned(),
            ],
            password_hash: Some(hash),
        };
        let document = plain_vm_document(&full).unwrap();
        // Every key of the template is in this one: a key added to the template and not to
        // the reader fails here.
        assert_eq!(
            body_keys(&document),
            ["chpasswd", "fqdn", "hostname", "ssh_authorized_keys"]
        );
        assert_eq!(
            read_plain_vm_document(&document).unwrap(),
            PlainVmDelivery {
                hostname: "web-1".to_owned(),
                fqdn: Some("web-1.example.com".to_owned()),
                ssh_keys: full.ssh_keys.clone(),
                password_set: true,
            }
        );
        let bare = plain_vm_document(&PlainVmFirstBoot {
            hostname: "db".to_owned(),
            default_user: "root".to_owned(),
            ssh_keys: Vec::new(),
            password_hash: None,
        })
        .unwrap();
        assert_eq!(
            read_plain_vm_document(&bare).unwrap(),
            PlainVmDelivery {
                hostname: "db".to_owned(),
                fqdn: None,
                ssh_keys: Vec::new(),
                password_set: false,
            }
        );
    }

    #[test]
    fn anything_but_a_plain_vm_document_is_refused() {
        let agent = super::super::agent_document(&super::super::AgentFirstBoot {
            identity: super::super::AgentIdentity {
                agent_id: "agt_1".to_owned(),
                image_version: "2026.11.0".to_owned(),
            },
            control_url: "http://127.0.0.1:9".to_owned(),
            bootstrap_token: Secret("agb_t".to_owned()),
            tunnel_token: None,
            clone_from: None,
        })
        .unwrap();
        assert!(
            read_plain_vm_document(&agent).is_err(),
            "an Agent's document"
        );
        let hash = "$6$rounds=5000$salt$abc";
        for (what, body) in [
            ("no header", None),
            ("not JSON", Some("hostname: web\n".to_owned())),
            (
                "no hostname",
                Some(json!({"fqdn": "web.example.com"}).to_string()),
            ),
            (
                "a key the template lacks",
                Some(json!({"hostname": "web", "runcmd": [["reboot"]]}).to_string()),
            ),
            (
                "a file written",
                Some(json!({"hostname": "web", "write_files": []}).to_string()),
            ),
            (
                "a dotted hostname",
                Some(json!({"hostname": "web.example.com"}).to_string()),
            ),
            (
                "an fqdn of another host",
                Some(json!({"hostname": "web", "fqdn": "db.example.com"}).to_string()),
            ),
            (
                "a plaintext password",
                Some(
                    json!({"hostname": "web", "chpasswd": {"expire": true, "users": [
                        {"name": "root", "password": "hunter2", "type": "text"}]}})
                    .to_string(),
                ),
            ),
            (
                "a password that does not expire",
                Some(
                    json!({"hostname": "web", "chpasswd": {"expire": false, "users": [
                        {"name": "root", "password": hash, "type": "hash"}]}})
                    .to_string(),
                ),
            ),
            (
                "two users' passwords",
                Some(
                    json!({"hostname": "web", "chpasswd": {"expire": true, "users": [
                        {"name": "root", "password": hash, "type": "hash"},
                        {"name": "debian", "password": hash, "type": "hash"}]}})
                    .to_string(),
                ),
            ),
            (
                "chpasswd's deprecated list",
                Some(
                    json!({"hostname": "web", "chpasswd": {"expire": true, "users": [
                        {"name": "root", "password": hash, "type": "hash"}],
                        "list": "root:hunter2"}})
                    .to_string(),
                ),
            ),
        ] {
            let text = body.map_or_else(
                || "{\"hostname\": \"web\"}".to_owned(),
                |b| format!("{HEADER}{b}"),
            );
            assert!(
                read_plain_vm_document(&Secret(text)).is_err(),
                "{what} was read as a Plain VM's document"
            );
        }
        let good = format!(
            "{HEADER}{}",
            json!({"hostname": "web", "chpasswd": {"expire": true, "users": [
                {"name": "root", "password": hash, "type": "hash"}]}})
        );
        assert!(
            read_plain_vm_document(&Secret(good)).unwrap().password_set,
            "the table's documents are refused for their fault alone"
        );
    }

    fn body_keys(document: &Secret) -> Vec<String> {
        body(document)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}
