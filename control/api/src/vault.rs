//! Vault keys: an account's OpenSSH public keys, which Plain VMs receive at provisioning.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// An OpenSSH public key in an account's Vault. Deleting it removes it from the account only:
/// VMs that already received it keep it in their `authorized_keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VaultKey {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// The algorithm as OpenSSH names it: `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`,
    /// `sk-ssh-ed25519@openssh.com`, …
    pub algorithm: String,
    /// The key's size in bits, as `ssh-keygen -l` prints it.
    pub bits: u32,
    /// `SHA256:` and the unpadded base64 of the key's SHA-256: what `ssh-keygen -lf` prints.
    pub fingerprint: String,
    /// The key as VMs receive it: algorithm, base64 and comment (never any options).
    pub public_key: String,
    #[serde(default)]
    pub comment: Option<String>,
    pub created_at: Timestamp,
}

/// Body of `POST /api/vault/keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddVaultKey {
    /// 1 to 100 characters, no control characters, not only white space.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 100,
            pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\u0000-\\u0020\\u007F-\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000-\\u001F\\u007F-\\u009F]*$"
        )
    )]
    pub name: String,
    /// One OpenSSH public key line, as in a `.pub` file: `ssh-ed25519 AAAA… comment`. Ed25519,
    /// ECDSA, RSA of at least 2048 bits and FIDO (`sk-`) keys; no `authorized_keys` options.
    pub public_key: String,
    /// The account; operator tokens must give it, account tokens must not.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^acc_[0-9A-Za-z]{26}$"))]
    pub account_id: Option<String>,
}

/// The keys of an account, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VaultKeyList {
    pub keys: Vec<VaultKey>,
}
