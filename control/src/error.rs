//! The error every service operation returns. The HTTP layer turns it into problem+json; the
//! command line prints it. Variants say what a caller can act on, never internals.

use control_api::problem::FieldError;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input, one entry per offending field. Nothing was changed.
    #[error("invalid input: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The resource does not exist or the caller may not see it (the two are indistinguishable
    /// on purpose).
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request is valid but conflicts with the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// A provider refused or failed a call the request needed; its own words. Nothing was
    /// changed.
    #[error("{0}")]
    Provider(String),
    /// A provider a request needed is failing or over its request budget; nothing was
    /// changed, and the request may be repeated after `retry_after`.
    #[error("{detail}")]
    ProviderUnavailable {
        detail: String,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] crate::auth::RandomError),
    /// Something of ours failed that the caller cannot act on (logged, answered 500).
    #[error("{0}")]
    Internal(String),
}

fn describe(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// What the caller learns when provider `name` refused or failed a call its request
    /// needed, before anything was recorded: a refusal of a value the caller gave (the error
    /// names its field) is invalid input in that field; another refusal is the provider's
    /// (502); a failing provider is unavailable for now (503).
    pub fn provider(name: &str, error: &crate::providers::ProviderError) -> Self {
        if error.kind == crate::providers::ErrorKind::Permanent
            && let Some(field) = error.field
        {
            return Self::invalid(field, error.message.clone());
        }
        if error.is_retryable() {
            Self::ProviderUnavailable {
                detail: format!(
                    "{name} is not answering as it should ({error}); nothing was recorded: \
                     repeat the request later"
                ),
                retry_after: error
                    .retry_after
                    .unwrap_or(std::time::Duration::from_secs(30)),
            }
        } else {
            Self::Provider(format!("{name} refused: {error}; nothing was recorded"))
        }
    }

    /// One invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::providers::ProviderError;

    #[test]
    fn a_refusal_of_the_callers_value_is_invalid_input_in_that_field() {
        let refused = ProviderError::permanent("hetzner has no server type \"cx99\"")
            .with_code("invalid_input")
            .on_field("server_type");
        let Error::Invalid(fields) = Error::provider("hetzner", &refused) else {
            panic!("not invalid input");
        };
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].field, "server_type");
        assert_eq!(fields[0].message, "hetzner has no server type \"cx99\"");
    }

    #[test]
    fn other_provider_failures_keep_their_answers() {
        // A refusal of a configured value names no field: the provider refused (502).
        let configured = ProviderError::permanent(
            "hetzner has no location \"mars1\" (configured as [hetzner] location)",
        );
        let answer = Error::provider("hetzner", &configured);
        assert!(
            matches!(&answer, Error::Provider(m) if m.contains("mars1") && m.contains("nothing was recorded")),
            "{answer:?}"
        );
        // A field on an error that may pass with time is no refusal of the value.
        let busy = ProviderError::transient("hetzner is down").on_field("image");
        assert!(
            matches!(
                Error::provider("hetzner", &busy),
                Error::ProviderUnavailable { .. }
            ),
            "retryable errors are unavailability, whatever they name"
        );
        let limited = ProviderError::rate_limited("spent", Some(Duration::from_secs(7)));
        assert!(matches!(
            Error::provider("hetzner", &limited),
            Error::ProviderUnavailable { retry_after, .. } if retry_after == Duration::from_secs(7)
        ));
        let missing = ProviderError::not_found("image 7").on_field("image");
        assert!(
            matches!(Error::provider("hetzner", &missing), Error::Provider(_)),
            "only a permanent refusal is invalid input"
        );
    }
}
