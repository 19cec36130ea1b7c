//! A Plain VM's one-shot first boot (`cloud-init/plain-vm.cloud-config`): its hostname (and
//! fqdn), the chosen Vault keys for the image's default user, and, when asked, a one-time
//! password that must be changed at first login — cloud-init receives only its SHA-512 crypt
//! hash. Nothing else: no packages, no commands, no files, no agent of ours.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{CloudInitError, render};
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

    fn body_keys(document: &Secret) -> Vec<String> {
        body(document)
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
}
