//! What a request is checked against before anything is recorded: that the project knows the
//! image, the server type and the location servers are made with, and offers the type there
//! (a check that passed is remembered for [`CHECKED_FOR`], so a burst of provisionings costs
//! three calls, not three each); and that Hetzner has not just refused a create for the
//! project's quota (`resource_limit_exceeded`, remembered for [`QUOTA_FOR`] or until something
//! of ours is deleted; Hetzner has no call that tells the quota beforehand).

use std::time::Duration;

use serde::Deserialize;

use super::{Hetzner, numeric};
use crate::clock::millis;
use crate::providers::ProviderError;

/// How long a passed check is trusted.
pub(super) const CHECKED_FOR: Duration = Duration::from_mins(10);

/// How long a quota refusal refuses new provisionings, unless something is deleted first.
pub(super) const QUOTA_FOR: Duration = Duration::from_mins(5);

#[derive(Debug, Deserialize)]
struct ServerTypes {
    server_types: Vec<ServerType>,
}

#[derive(Debug, Deserialize)]
struct ServerType {
    name: String,
    #[serde(default)]
    prices: Vec<Price>,
}

#[derive(Debug, Deserialize)]
struct Price {
    location: String,
}

#[derive(Debug, Deserialize)]
struct Locations {
    locations: Vec<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

/// Hetzner's word for a refusal of ours: the request cannot succeed as configured.
fn refused(message: String) -> ProviderError {
    ProviderError::permanent(message).with_code("invalid_input")
}

/// The kind of resource a path is about: its first segment (`/servers/42` → `/servers`).
fn kind(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    format!("/{}", rest.split(['/', '?']).next().unwrap_or_default())
}

fn query(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Hetzner {
    /// Remembers a quota refusal Hetzner answered a create at `path` with.
    pub(super) fn note_quota(&self, path: &str, error: &ProviderError) {
        if error.code.as_deref() == Some("resource_limit_exceeded") {
            let until = self.api.clock().now().as_millis() + millis(QUOTA_FOR);
            crate::sync::lock(&self.quota_spent).insert(kind(path), (error.clone(), until));
        }
    }

    /// Something of ours at `path` was deleted: that kind's quota may have room again.
    pub(super) fn quota_freed(&self, path: &str) {
        crate::sync::lock(&self.quota_spent).remove(&kind(path));
    }

    /// A quota refusal Hetzner answered lately, if one still stands.
    pub(super) fn check_quota(&self) -> Result<(), ProviderError> {
        let now = self.api.clock().now().as_millis();
        let spent = crate::sync::lock(&self.quota_spent);
        match spent.values().find(|(_, until)| *until > now) {
            Some((refusal, _)) => Err(ProviderError {
                message: format!(
                    "{} (Hetzner refused a create for the project's quota in the last {} \
                     minutes, and nothing of that kind has been deleted since)",
                    refusal.message,
                    QUOTA_FOR.as_secs() / 60
                ),
                ..refusal.clone()
            }),
            None => Ok(()),
        }
    }

    /// Checks that servers can be made from `image` with the configured type and location.
    pub(super) async fn check_catalogue(&self, image: &str) -> Result<(), ProviderError> {
        let now = self.api.clock().now().as_millis();
        let key = format!(
            "{image} {} {}",
            self.config.server_type, self.config.location
        );
        if self.checked.holds(&key, now) {
            return Ok(());
        }
        let (server_type, location) = (&self.config.server_type, &self.config.location);
        let types: ServerTypes = self
            .get(&format!("/server_types?name={}", query(server_type)))
            .await?;
        let Some(found) = types.server_types.iter().find(|t| &t.name == server_type) else {
            return Err(refused(format!(
                "hetzner has no server type {server_type:?} (configured as [hetzner] server_type)"
            )));
        };
        let locations: Locations = self
            .get(&format!("/locations?name={}", query(location)))
            .await?;
        if !locations.locations.iter().any(|l| &l.name == location) {
            return Err(refused(format!(
                "hetzner has no location {location:?} (configured as [hetzner] location)"
            )));
        }
        if !found.prices.iter().any(|p| &p.location == location) {
            return Err(refused(format!(
                "hetzner does not offer server type {server_type:?} in location {location:?}"
            )));
        }
        // Releases name Hetzner images by id (POST /api/images checks).
        let id = numeric(image, "image")?;
        let known = self
            .find::<serde_json::Value>(&format!("/images/{id}"))
            .await?
            .is_some();
        if !known {
            return Err(refused(format!(
                "hetzner has no image {image:?} (the current release's hetzner reference)"
            )));
        }
        self.checked.remember(key, now + millis(CHECKED_FOR));
        Ok(())
    }
}
