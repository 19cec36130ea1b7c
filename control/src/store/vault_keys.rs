//! Vault keys: an account's OpenSSH public keys.

use super::{Result, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct VaultKeyRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub algorithm: String,
    pub bits: i64,
    pub fingerprint: String,
    pub public_key: String,
    pub comment: Option<String>,
    pub created_at: i64,
}

/// `SELECT` of every column, for the `WHERE` that follows.
macro_rules! vault_select {
    () => {
        "SELECT id, account_id, name, algorithm, bits, fingerprint, public_key, comment, created_at
         FROM vault_keys "
    };
}

impl Tx {
    pub async fn insert_vault_key(&mut self, key: &VaultKeyRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO vault_keys (id, account_id, name, algorithm, bits, fingerprint, public_key,
                                     comment, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&key.id)
        .bind(&key.account_id)
        .bind(&key.name)
        .bind(&key.algorithm)
        .bind(key.bits)
        .bind(&key.fingerprint)
        .bind(&key.public_key)
        .bind(&key.comment)
        .bind(key.created_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// The key `id`, if `account` (all accounts when `None`) holds it.
    pub async fn vault_key(
        &mut self,
        id: &str,
        account: Option<&str>,
    ) -> Result<Option<VaultKeyRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(concat!(
            vault_select!(),
            "WHERE id = $1 AND account_id = COALESCE($2, account_id)"
        ))
            .bind(id)
            .bind(account)
            .fetch_optional(conn)
            .await)?)
    }

    /// The key with this fingerprint in `account`'s Vault.
    pub async fn vault_key_by_fingerprint(
        &mut self,
        account: &str,
        fingerprint: &str,
    ) -> Result<Option<VaultKeyRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(concat!(
            vault_select!(),
            "WHERE account_id = $1 AND fingerprint = $2"
        ))
            .bind(account)
            .bind(fingerprint)
            .fetch_optional(conn)
            .await)?)
    }

    /// `account`'s keys (every account's when `None`), oldest first, at most `limit`.
    pub async fn vault_keys(
        &mut self,
        account: Option<&str>,
        limit: i64,
    ) -> Result<Vec<VaultKeyRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(concat!(
            vault_select!(),
            "WHERE account_id = COALESCE($1, account_id) ORDER BY id LIMIT $2"
        ))
            .bind(account)
            .bind(limit)
            .fetch_all(conn)
            .await)?)
    }

    /// How many keys `account`'s Vault holds.
    pub async fn vault_key_count(&mut self, account: &str) -> Result<i64> {
        Ok(on_conn!(self, conn => sqlx::query_scalar(
            "SELECT COUNT(*) FROM vault_keys WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(conn)
        .await)?)
    }

    /// Deletes key `id`; false if there was none.
    pub async fn delete_vault_key(&mut self, id: &str) -> Result<bool> {
        let deleted = on_conn!(self, conn => sqlx::query("DELETE FROM vault_keys WHERE id = $1")
            .bind(id)
            .execute(conn)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(deleted == 1)
    }
}
