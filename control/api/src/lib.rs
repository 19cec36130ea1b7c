//! Wire types exchanged with `control`: by the dashboard over the public API and by `vm-agent`
//! over the agent API.
//!
//! This crate holds types and their JSON shape only (and, in [`agent_config`], the TOML of the
//! agent's config file), never behaviour that needs the server, so the agent can depend on it
//! without pulling in storage or HTTP code. Types change additively
//! (new fields are `Option` with `#[serde(default)]`) so an old agent keeps talking to a new
//! control; `tests/golden.rs` pins the JSON of every type.

pub mod accounts;
pub mod agent;
pub mod agent_config;
pub mod agents;
pub mod audit;
pub mod images;
pub mod instant;
pub mod plain_vms;
pub mod problem;
pub mod usage;
pub mod vault;

pub use instant::{Day, Timestamp};

/// The note an Agent pinned to an image older than the current release carries.
pub const UPGRADE_NOTE: &str = "Cloning is the supported upgrade path";

/// Answer of `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`, or `unavailable` with the failing dependency in `detail`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The token of an `Authorization` header that reads `Bearer <token>`, as the dashboard and
/// vm-agent send it; `None` for another scheme or no token. The scheme is matched without
/// regard to case (RFC 7235 §2.1) and the token is trimmed.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// The key a deserialization error is about, from the path the deserializer reached (as
/// `serde_path_to_error` prints it: `.` or `?` for the top) and its message: a missing key is
/// reported at its parent, so the key named in the message is joined to that path. Empty for
/// the document itself. Control names the field of a refused request with it, vm-agent the key
/// of a refused configuration.
pub fn error_field(path: &str, message: &str) -> String {
    let parent = if path == "." || path == "?" { "" } else { path };
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (parent, missing) {
        ("", Some(name)) => name.to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (parent, None) => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, error_field};

    #[test]
    fn error_fields_name_the_missing_key_under_its_parent() {
        assert_eq!(error_field(".", "missing field `name`"), "name");
        assert_eq!(error_field("?", "missing field `name`"), "name");
        assert_eq!(
            error_field("slice", "missing field `path` at line 3"),
            "slice.path"
        );
        assert_eq!(
            error_field("heartbeat.interval_s", "invalid type"),
            "heartbeat.interval_s"
        );
        assert_eq!(error_field(".", "expected a map"), "");
    }

    #[test]
    fn bearer_tokens_are_read_with_any_case_of_the_scheme() {
        for (header, token) in [
            ("Bearer ctl_x", Some("ctl_x")),
            ("bearer ctl_x", Some("ctl_x")),
            ("BEARER ctl_x", Some("ctl_x")),
            ("BeArEr   ctl_x  ", Some("ctl_x")),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearer    ", None),
            ("Basic dXNlcjpwYXNz", None),
            ("Bearerctl_x", None),
            ("Bearer:ctl_x", None),
            ("", None),
        ] {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
    }
}
