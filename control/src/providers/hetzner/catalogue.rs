//! What a request is checked against before anything is recorded: that the project knows the
//! image (by id, or by name for the server type's architecture), the server type and the
//! location a server is to be made with — the request's own, or the configured ones — and
//! offers the type there (a check that passed is remembered for [`CHECKED_FOR`] by all three,
//! so a burst of provisionings costs three calls, not three each); and that Hetzner has not
//! just refused a create for the project's quota (`resource_limit_exceeded`, remembered for
//! [`QUOTA_FOR`] or until something of ours is deleted; Hetzner has no call that tells the
//! quota beforehand).

use std::time::Duration;

use serde::Deserialize;

use super::{Hetzner, numeric};
use crate::clock::millis;
use crate::providers::{Placement, ProviderError};

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
    /// `x86` or `arm`: what the image must be built for.
    #[serde(default)]
    architecture: Option<String>,
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

/// `GET /images/{id}`.
#[derive(Debug, Deserialize)]
struct OneImage {
    image: Image,
}

/// `GET /images?name=`.
#[derive(Debug, Deserialize)]
struct Images {
    images: Vec<Image>,
}

#[derive(Debug, Deserialize)]
struct Image {
    /// Snapshots have none.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
}

/// A server type or location to check: the placement's (`field` names it) or the configured
/// one (`key` in `[hetzner]`).
struct Chosen<'a> {
    value: &'a str,
    field: Option<&'static str>,
    key: &'static str,
}

impl<'a> Chosen<'a> {
    fn of(given: Option<&'a str>, configured: &'a str, key: &'static str) -> Self {
        Self {
            value: given.unwrap_or(configured),
            field: given.map(|_| key),
            key,
        }
    }

    /// `what` refuses the value: on the caller's field, or naming the configuration key.
    fn refused(&self, what: &str) -> ProviderError {
        match self.field {
            Some(field) => refused(format!("{what} {:?}", self.value)).on_field(field),
            None => refused(format!(
                "{what} {:?} (configured as [hetzner] {})",
                self.value, self.key
            )),
        }
    }
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

    /// Checks that servers can be made as `placement` says, with the configured type and
    /// location where it names none. A refusal of a value the placement gave names its field;
    /// one of a configured value names the configuration key instead.
    pub(super) async fn check_catalogue(
        &self,
        placement: &Placement<'_>,
    ) -> Result<(), ProviderError> {
        let server_type = Chosen::of(
            placement.server_type,
            &self.config.server_type,
            "server_type",
        );
        let location = Chosen::of(placement.location, &self.config.location, "location");
        let image = placement.image;
        let now = self.api.clock().now().as_millis();
        // Debug quoting keeps the three apart whatever they hold.
        let key = format!("{image:?} {:?} {:?}", server_type.value, location.value);
        if self.checked.holds(&key, now) {
            return Ok(());
        }
        let types: ServerTypes = self
            .get(&format!("/server_types?name={}", query(server_type.value)))
            .await?;
        let Some(found) = types
            .server_types
            .iter()
            .find(|t| t.name == server_type.value)
        else {
            return Err(server_type.refused("hetzner has no server type"));
        };
        let locations: Locations = self
            .get(&format!("/locations?name={}", query(location.value)))
            .await?;
        if !locations.locations.iter().any(|l| l.name == location.value) {
            return Err(location.refused("hetzner has no location"));
        }
        if !found.prices.iter().any(|p| p.location == location.value) {
            let refusal = refused(format!(
                "hetzner does not offer server type {:?} in location {:?}",
                server_type.value, location.value
            ));
            // The caller's choice is what cannot be served: the type when they chose it.
            return Err(match (server_type.field, location.field) {
                (Some(field), _) | (None, Some(field)) => refusal.on_field(field),
                (None, None) => refusal,
            });
        }
        self.check_image(image, found).await?;
        self.checked.remember(key, now + millis(CHECKED_FOR));
        Ok(())
    }

    /// Checks that the project has `image` for servers of type `server_type`: by id when it is
    /// a number (a release's snapshot), by name otherwise (a system image such as
    /// `debian-12`, which Hetzner keeps once per architecture).
    async fn check_image(
        &self,
        image: &str,
        server_type: &ServerType,
    ) -> Result<(), ProviderError> {
        let no_image = || refused(format!("hetzner has no image {image:?}")).on_field("image");
        let candidates: Vec<Image> =
            if !image.is_empty() && image.bytes().all(|b| b.is_ascii_digit()) {
                let id = numeric(image, "image").map_err(|_| no_image())?;
                self.find::<OneImage>(&format!("/images/{id}"))
                    .await?
                    .map(|found| found.image)
                    .into_iter()
                    .collect()
            } else {
                let found: Images = self.get(&format!("/images?name={}", query(image))).await?;
                found
                    .images
                    .into_iter()
                    .filter(|i| i.name.as_deref() == Some(image))
                    .collect()
            };
        if candidates.is_empty() {
            return Err(no_image());
        }
        let fits = |i: &Image| match (&i.architecture, &server_type.architecture) {
            (Some(image), Some(wanted)) => image == wanted,
            _ => true,
        };
        if !candidates.iter().any(fits) {
            return Err(refused(format!(
                "hetzner has no image {image:?} for server type {:?} ({} architecture)",
                server_type.name,
                server_type.architecture.as_deref().unwrap_or_default()
            ))
            .on_field("image"));
        }
        Ok(())
    }
}
