//! API tokens: random, shown once, stored as a SHA-256 hash, compared in constant time.
//!
//! A bearer token reads `ctl_<token id>_<64 hex digits>`. The id part finds the row, so lookup
//! never depends on the secret; the secret is then checked against the stored hash with a
//! constant-time comparison. The secret never reaches a log line or the database.

use control_api::accounts::TokenRole;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{new_id, prefix};
use crate::store::TokenRow;

const BEARER_PREFIX: &str = "ctl_";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Operator {
        token_id: String,
    },
    Account {
        token_id: String,
        account_id: String,
    },
}

impl Principal {
    /// The audit log's name for this caller.
    pub fn actor(&self) -> String {
        match self {
            Self::Operator { token_id } | Self::Account { token_id, .. } => {
                format!("token:{token_id}")
            }
        }
    }

    /// The account this caller is confined to; `None` for operators.
    pub fn account_scope(&self) -> Option<&str> {
        match self {
            Self::Operator { .. } => None,
            Self::Account { account_id, .. } => Some(account_id),
        }
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Self::Operator { .. })
    }

    /// Whether this caller may see a resource owned by `account_id`.
    pub fn can_see(&self, account_id: &str) -> bool {
        self.account_scope().is_none_or(|own| own == account_id)
    }

    /// Idempotency keys are scoped per account (or to the operators), like the resources.
    pub fn idempotency_scope(&self) -> String {
        match self.account_scope() {
            Some(account_id) => format!("account:{account_id}"),
            None => "operator".to_owned(),
        }
    }
}

/// A token just created: the row to store and the bearer string to show once.
#[derive(Debug)]
pub struct IssuedToken {
    pub row: TokenRow,
    pub bearer: String,
}

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed")]
pub struct RandomError(#[source] getrandom::Error);

/// 32 random bytes from the operating system, as 64 hex digits.
pub fn random_secret() -> Result<String, RandomError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(RandomError)?;
    Ok(hex::encode(secret))
}

pub fn issue(
    role: TokenRole,
    account_id: Option<String>,
    label: Option<String>,
    now_ms: i64,
) -> Result<IssuedToken, RandomError> {
    let secret = random_secret()?;
    let id = new_id(prefix::TOKEN);
    Ok(IssuedToken {
        bearer: format!("{BEARER_PREFIX}{id}_{secret}"),
        row: TokenRow {
            secret_hash: hash_secret(&secret),
            id,
            role,
            account_id,
            label,
            created_at: now_ms,
            revoked_at: None,
        },
    })
}

/// Splits a bearer string into `(token id, secret)`, or `None` if it is not one of ours.
pub fn parse_bearer(bearer: &str) -> Option<(&str, &str)> {
    let rest = bearer.strip_prefix(BEARER_PREFIX)?;
    let (id, secret) = rest.rsplit_once('_')?;
    let well_formed = crate::ids::looks_like(prefix::TOKEN, id)
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then_some((id, secret))
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` matches the stored hash, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// The principal a stored, unrevoked token stands for.
pub fn principal_of(token: &TokenRow) -> Option<Principal> {
    if token.revoked_at.is_some() {
        return None;
    }
    match (token.role, &token.account_id) {
        (TokenRole::Operator, None) => Some(Principal::Operator {
            token_id: token.id.clone(),
        }),
        (TokenRole::Account, Some(account_id)) => Some(Principal::Account {
            token_id: token.id.clone(),
            account_id: account_id.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_store_only_a_hash() {
        let issued = issue(TokenRole::Operator, None, None, 0).unwrap();
        let (id, secret) = parse_bearer(&issued.bearer).unwrap();
        assert_eq!(id, issued.row.id);
        assert!(secret_matches(secret, &issued.row.secret_hash));
        assert!(!issued.row.secret_hash.contains(secret));
        let mut wrong = secret.to_owned();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        assert!(!secret_matches(&wrong, &issued.row.secret_hash));
    }

    #[test]
    fn malformed_bearers_are_not_parsed() {
        for bad in [
            "",
            "ctl_",
            "Bearer x",
            "ctl_tok_123_abc",
            "ctl_acc_01JDQ6V9X8RTS5N0Z5G8K2M4PQ_00",
        ] {
            assert_eq!(parse_bearer(bad), None, "{bad}");
        }
    }
}
