//! Platform image releases. Registering or selecting a release never touches existing Agents:
//! each keeps the release it was provisioned on.

pub mod manifest;

use std::collections::BTreeMap;

use control_api::Timestamp;
use control_api::images::{Image, ImageList, RegisterImage, SetCurrentImage};
use tracing::info;

use crate::app::App;
use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{new_id, prefix};
use crate::store::{ImageRow, StoreError};
use crate::validate::Checks;

fn to_api(row: ImageRow, current: Option<&str>) -> Result<Image, StoreError> {
    let parse = |what: &str, text: &str| -> Result<BTreeMap<String, String>, StoreError> {
        serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("image {} {what}: {e}", row.id)))
    };
    Ok(Image {
        refs: parse("refs", &row.refs)?,
        env: parse("env", &row.env)?,
        current: current == Some(row.id.as_str()),
        id: row.id,
        version: row.version,
        agent_version: row.agent_version,
        manifest_digest: row.manifest_digest,
        created_at: Timestamp::from_millis(row.created_at),
    })
}

pub async fn register(
    app: &App,
    request: &RegisterImage,
    idem: Option<&IdempotencyKey>,
) -> Result<Image> {
    let mut checks = Checks::new();
    checks.version("version", &request.version);
    checks.version("agent_version", &request.agent_version);
    checks.digest("manifest_digest", &request.manifest_digest);
    checks.image_refs("refs", &request.refs);
    checks.env("env", &request.env);
    checks.finish()?;
    let encode = |map: &BTreeMap<String, String>| {
        serde_json::to_string(map).map_err(|e| StoreError::Corrupt(format!("encoding image: {e}")))
    };
    let row = ImageRow {
        id: new_id(prefix::IMAGE),
        version: request.version.clone(),
        agent_version: request.agent_version.clone(),
        manifest_digest: request.manifest_digest.clone(),
        refs: encode(&request.refs)?,
        env: encode(&request.env)?,
        created_at: app.clock.now().as_millis(),
    };
    let mut tx = app.store.write().await?;
    match tx.insert_image(&row).await {
        Err(StoreError::Conflict(_)) => {
            return Err(Error::Conflict(format!(
                "release {} is already registered",
                request.version
            )));
        }
        other => other?,
    }
    let current = tx.current_image().await?.map(|c| c.id);
    let image = to_api(row, current.as_deref())?;
    idempotency::record(&mut tx, idem, 201, &image).await?;
    tx.commit().await?;
    info!(image_id = %image.id, version = %image.version, "image release registered");
    Ok(image)
}

/// Registers `request`, or answers the release already registered under its version when it
/// was registered exactly so (agent version, manifest digest, refs and env): repeating a
/// registration is safe. A release registered otherwise is a conflict naming what differs,
/// and nothing is changed.
pub async fn register_once(app: &App, request: &RegisterImage) -> Result<Image> {
    let message = match register(app, request, None).await {
        Err(Error::Conflict(message)) => message,
        other => return other,
    };
    let Some(existing) = list(app)
        .await?
        .items
        .into_iter()
        .find(|image| image.version == request.version)
    else {
        return Err(Error::Conflict(message));
    };
    let differences = differences(&existing, request);
    if differences.is_empty() {
        info!(image_id = %existing.id, version = %existing.version, "image release already registered as asked");
        return Ok(existing);
    }
    Err(Error::Conflict(format!(
        "release {} is already registered as {} with a different {}; nothing was changed",
        request.version,
        existing.id,
        differences.join(", a different ")
    )))
}

/// What `request` asks for that `existing` does not have (env values are named, not shown).
fn differences(existing: &Image, request: &RegisterImage) -> Vec<String> {
    let show = |map: &BTreeMap<String, String>| serde_json::to_string(map).unwrap_or_default();
    let mut differences = Vec::new();
    if existing.agent_version != request.agent_version {
        differences.push(format!(
            "agent_version (registered {}, asked {})",
            existing.agent_version, request.agent_version
        ));
    }
    if existing.manifest_digest != request.manifest_digest {
        differences.push(format!(
            "manifest_digest (registered {}, asked {})",
            existing.manifest_digest, request.manifest_digest
        ));
    }
    if existing.refs != request.refs {
        differences.push(format!(
            "refs (registered {}, asked {})",
            show(&existing.refs),
            show(&request.refs)
        ));
    }
    if existing.env != request.env {
        let names: std::collections::BTreeSet<&String> = existing
            .env
            .iter()
            .chain(&request.env)
            .filter(|(name, value)| {
                existing.env.get(*name) != Some(*value) || request.env.get(*name) != Some(*value)
            })
            .map(|(name, _)| name)
            .collect();
        differences.push(format!(
            "env (differing in {})",
            names.into_iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    differences
}

pub async fn list(app: &App) -> Result<ImageList> {
    let mut tx = app.store.read().await?;
    let current = tx.current_image().await?.map(|c| c.id);
    let items = tx
        .images()
        .await?
        .into_iter()
        .map(|row| to_api(row, current.as_deref()))
        .collect::<Result<_, _>>()?;
    Ok(ImageList { items })
}

/// Makes a registered release the one new Agents are provisioned on.
pub async fn set_current(app: &App, request: &SetCurrentImage) -> Result<Image> {
    let now = app.clock.now();
    if !crate::ids::looks_like(prefix::IMAGE, &request.image_id) {
        return Err(Error::invalid(
            "image_id",
            format!("no image release {}", request.image_id.escape_debug()),
        ));
    }
    let mut tx = app.store.write().await?;
    let Some(row) = tx.image(&request.image_id).await? else {
        return Err(Error::invalid(
            "image_id",
            format!("no image release {}", request.image_id),
        ));
    };
    tx.set_current_image(&row.id, now.as_millis()).await?;
    tx.commit().await?;
    info!(image_id = %row.id, version = %row.version, "current image release selected");
    let id = row.id.clone();
    Ok(to_api(row, Some(&id))?)
}
