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
    /// needed, before anything was recorded.
    pub fn provider(name: &str, error: &crate::providers::ProviderError) -> Self {
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
