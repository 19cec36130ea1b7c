//! What a request is checked against before anything is recorded: that the project knows the
//! image, the server type and the location servers are made with, and offers the type there.
//! A check that passed is remembered for [`CHECKED_FOR`], so a burst of provisionings costs
//! three calls, not three each.

use std::time::Duration;

use serde::Deserialize;

use super::{Hetzner, numeric};
use crate::clock::millis;
use crate::providers::ProviderError;

/// How long a passed check is trusted.
pub(super) const CHECKED_FOR: Duration = Duration::from_mins(10);

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

fn query(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Hetzner {
    /// Checks that servers can be made from `image` with the configured type and location.
    pub(super) async fn check_catalogue(&self, image: &str) -> Result<(), ProviderError> {
        let now = self.clock.now().as_millis();
        let key = format!(
            "{image} {} {}",
            self.config.server_type, self.config.location
        );
        if crate::sync::lock(&self.checked)
            .get(&key)
            .is_some_and(|until| *until > now)
        {
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
        crate::sync::lock(&self.checked).insert(key, now + millis(CHECKED_FOR));
        Ok(())
    }
}
