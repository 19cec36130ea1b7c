//! Accounts and API tokens.

use control_api::accounts::TokenRole;

use super::{DbText, Result, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// A stored token: only the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub role: TokenRole,
    pub account_id: Option<String>,
    pub label: Option<String>,
    pub secret_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct RawToken {
    id: String,
    role: String,
    account_id: Option<String>,
    label: Option<String>,
    secret_hash: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<RawToken> for TokenRow {
    type Error = super::StoreError;
    fn try_from(raw: RawToken) -> Result<Self> {
        Ok(Self {
            role: TokenRole::from_db(&raw.role)?,
            id: raw.id,
            account_id: raw.account_id,
            label: raw.label,
            secret_hash: raw.secret_hash,
            created_at: raw.created_at,
            revoked_at: raw.revoked_at,
        })
    }
}

impl Tx {
    pub async fn insert_account(&mut self, account: &AccountRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&account.id)
        .bind(&account.name)
        .bind(account.created_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn account(&mut self, id: &str) -> Result<Option<AccountRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, name, created_at FROM accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?)
    }

    pub async fn insert_token(&mut self, token: &TokenRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO api_tokens (id, role, account_id, label, secret_hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(token.role.as_db())
        .bind(&token.account_id)
        .bind(&token.label)
        .bind(&token.secret_hash)
        .bind(token.created_at)
        .bind(token.revoked_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn token(&mut self, id: &str) -> Result<Option<TokenRow>> {
        let raw: Option<RawToken> = on_conn!(self, conn => sqlx::query_as(
            "SELECT id, role, account_id, label, secret_hash, created_at, revoked_at
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?;
        raw.map(TokenRow::try_from).transpose()
    }

    /// How many operator tokens exist, revoked or not.
    pub async fn operator_token_count(&mut self) -> Result<i64> {
        Ok(on_conn!(self, conn => sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE role = 'operator'",
        )
        .fetch_one(conn)
        .await)?)
    }
}
