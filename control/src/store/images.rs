//! Platform image releases and the pointer to the current one.

use super::{Result, Tx, on_conn};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ImageRow {
    pub id: String,
    pub version: String,
    pub agent_version: String,
    pub manifest_digest: String,
    /// JSON object: provider -> reference.
    pub refs: String,
    /// JSON object of environment variables.
    pub env: String,
    pub created_at: i64,
}

impl Tx {
    pub async fn insert_image(&mut self, image: &ImageRow) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO images (id, version, agent_version, manifest_digest, refs, env, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&image.id)
        .bind(&image.version)
        .bind(&image.agent_version)
        .bind(&image.manifest_digest)
        .bind(&image.refs)
        .bind(&image.env)
        .bind(image.created_at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    pub async fn image(&mut self, id: &str) -> Result<Option<ImageRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, version, agent_version, manifest_digest, refs, env, created_at
             FROM images WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .await)?)
    }

    /// Every release, newest first.
    pub async fn images(&mut self) -> Result<Vec<ImageRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT id, version, agent_version, manifest_digest, refs, env, created_at
             FROM images ORDER BY created_at DESC, id DESC",
        )
        .fetch_all(conn)
        .await)?)
    }

    pub async fn current_image(&mut self) -> Result<Option<ImageRow>> {
        Ok(on_conn!(self, conn => sqlx::query_as(
            "SELECT i.id, i.version, i.agent_version, i.manifest_digest, i.refs, i.env, i.created_at
             FROM current_image c JOIN images i ON i.id = c.image_id",
        )
        .fetch_optional(conn)
        .await)?)
    }

    pub async fn set_current_image(&mut self, image_id: &str, at: i64) -> Result<()> {
        on_conn!(self, conn => sqlx::query(
            "INSERT INTO current_image (singleton, image_id, set_at) VALUES (1, $1, $2)
             ON CONFLICT (singleton) DO UPDATE SET image_id = excluded.image_id, set_at = excluded.set_at",
        )
        .bind(image_id)
        .bind(at)
        .execute(conn)
        .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }
}
