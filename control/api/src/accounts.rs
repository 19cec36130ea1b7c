//! Accounts and API tokens.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A customer account: the unit of isolation and of billing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    pub id: String,
    pub name: String,
    pub created_at: Timestamp,
}

/// Body of `POST /api/accounts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// 1 to 100 characters, no control characters.
    pub name: String,
}

/// Body of `POST /api/accounts/{id}/tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A note for humans, such as `dashboard` (at most 100 characters).
    #[serde(default)]
    pub label: Option<String>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Acts platform-wide.
    Operator,
    /// Sees and touches only its own account's resources.
    Account,
}

/// A newly created token. `token` is shown this once; control keeps only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedToken {
    pub id: String,
    pub role: TokenRole,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    pub created_at: Timestamp,
    /// The bearer secret. Store it now: it cannot be shown again.
    pub token: String,
}
