//! Input rules shared by the API and the command line. Each check names the offending field
//! and says what would be accepted; a request is rejected with every bad field at once and
//! nothing is written.

use std::collections::BTreeMap;

use control_api::problem::FieldError;

use crate::error::{Error, Result};

/// The providers an image release may carry a reference for.
pub const PROVIDERS: [&str; 3] = ["hetzner", "fly", "local"];

/// Collects field errors.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn ensure(&mut self, ok: bool, field: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(field, message());
        }
    }

    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self.0))
        }
    }

    /// An RFC 1123 label: 1 to 63 of `a-z 0-9 -`, not starting or ending with a hyphen.
    pub fn dns_label(&mut self, field: &str, value: &str) {
        let length = value.chars().count();
        if !(1..=63).contains(&length) {
            self.fail(
                field,
                format!("must be 1 to 63 characters long, got {length}"),
            );
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            self.fail(
                field,
                "may contain only lowercase letters, digits and hyphens (an RFC 1123 label)",
            );
        } else if value.starts_with('-') || value.ends_with('-') {
            self.fail(field, "must not start or end with a hyphen");
        }
    }

    /// An RFC 1123 host name: labels of 1 to 63 letters, digits and hyphens (not at either end),
    /// joined by dots, at most 253 characters, the last label not all digits (which would read
    /// as an IP address).
    pub fn hostname(&mut self, field: &str, value: &str) {
        let labels: Vec<&str> = value.split('.').collect();
        let problem = if value.is_empty() || value.len() > 253 {
            Some(format!(
                "must be 1 to 253 characters long, got {}",
                value.chars().count()
            ))
        } else if let Some(label) = labels
            .iter()
            .find(|label| label.is_empty() || label.len() > 63)
        {
            Some(format!(
                "has a label of {} characters: each between dots must be 1 to 63 long",
                label.len()
            ))
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            Some(
                "may contain only letters, digits, hyphens and dots (an RFC 1123 host name)"
                    .to_owned(),
            )
        } else if labels
            .iter()
            .any(|l| l.starts_with('-') || l.ends_with('-'))
        {
            Some("has a label starting or ending with a hyphen".to_owned())
        } else if labels.len() > 1
            && labels
                .last()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            Some("must not end in an all-numeric label (it would read as an IP address)".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            self.fail(field, problem);
        }
    }

    /// Free text for humans: 1 to `max` characters, no control characters, not only spaces.
    pub fn display_text(&mut self, field: &str, value: &str, max: usize) {
        let length = value.chars().count();
        if length == 0 || value.trim().is_empty() {
            self.fail(field, "must not be empty");
        } else if length > max {
            self.fail(
                field,
                format!("must be at most {max} characters long, got {length}"),
            );
        } else if value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        }
    }

    /// A version string: 1 to 64 of `A-Z a-z 0-9 . _ + -`.
    pub fn version(&mut self, field: &str, value: &str) {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
        self.ensure(ok, field, || {
            "must be 1 to 64 characters of letters, digits, `.`, `_`, `+` and `-`".to_owned()
        });
    }

    /// `sha256:` followed by 64 lowercase hex digits.
    pub fn digest(&mut self, field: &str, value: &str) {
        let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        self.ensure(ok, field, || {
            "must be `sha256:` followed by 64 lowercase hex digits".to_owned()
        });
    }

    /// Per-provider image references: at least one, each in its provider's form.
    pub fn image_refs(&mut self, field: &str, refs: &BTreeMap<String, String>) {
        if refs.is_empty() {
            self.fail(
                field,
                format!("must name at least one of {}", PROVIDERS.join(", ")),
            );
        }
        for (provider, reference) in refs {
            let path = format!("{field}.{provider}");
            match provider.as_str() {
                "hetzner" => self.ensure(
                    !reference.is_empty()
                        && reference.len() <= 20
                        && reference.bytes().all(|b| b.is_ascii_digit()),
                    &path,
                    || "must be a numeric Hetzner image id".to_owned(),
                ),
                "fly" => self.ensure(
                    reference.len() <= 512
                        && reference.split_once("@sha256:").is_some_and(|(repo, hex)| {
                            !repo.is_empty()
                                && hex.len() == 64
                                && hex.bytes().all(|b| b.is_ascii_hexdigit())
                        }),
                    &path,
                    || "must be an image pinned by digest, `repository@sha256:<64 hex>`".to_owned(),
                ),
                "local" => self.display_text(&path, reference, 200),
                other => self.fail(
                    &path,
                    format!(
                        "unknown provider `{other}`; known: {}",
                        PROVIDERS.join(", ")
                    ),
                ),
            }
        }
    }

    /// Environment variables: at most 100, names like `FOO_BAR`, values up to 4096 characters
    /// (as JSON Schema's `maxLength` counts them, so the API document can say it).
    pub fn env(&mut self, field: &str, env: &BTreeMap<String, String>) {
        if env.len() > 100 {
            self.fail(
                field,
                format!("must have at most 100 variables, got {}", env.len()),
            );
        }
        for (name, value) in env {
            let path = format!("{field}.{name}");
            let good_name = name.len() <= 128
                && name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !good_name {
                self.fail(
                    &path,
                    "variable names must match [A-Z_][A-Z0-9_]*, at most 128 characters",
                );
            } else if value.chars().count() > 4096 || value.contains('\0') {
                self.fail(
                    &path,
                    "values must be at most 4096 characters without NUL characters",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: impl FnOnce(&mut Checks)) -> Vec<String> {
        let mut checks = Checks::new();
        f(&mut checks);
        checks.0.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn dns_labels() {
        for good in ["a", "dev-box", "x1", &"a".repeat(63)] {
            assert!(errors(|c| c.dns_label("name", good)).is_empty(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Dev",
            "a_b",
            "a.b",
            &"a".repeat(64),
            &"a".repeat(200),
            "ü",
        ] {
            assert_eq!(errors(|c| c.dns_label("name", bad)), ["name"], "{bad}");
        }
    }

    #[test]
    fn rfc_1123_host_names() {
        let long_label = "a".repeat(63);
        let longest = [long_label.as_str(); 4]
            .join(".")
            .chars()
            .take(253)
            .collect::<String>();
        for good in [
            "a",
            "web-1",
            "Web1.Example.com",
            "1password",
            "db.internal",
            &longest,
        ] {
            assert!(
                errors(|c| c.hostname("hostname", good)).is_empty(),
                "{good}"
            );
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "ü.example",
            "10.0.0.1",
            "host.123",
            &"a".repeat(64),
            &format!("{longest}a"),
        ] {
            assert_eq!(
                errors(|c| c.hostname("hostname", bad)),
                ["hostname"],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn image_refs_follow_each_provider() {
        let refs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let digest = "a".repeat(64);
        let good = refs(&[
            ("hetzner", "123456"),
            ("fly", &format!("registry.fly.io/agent@sha256:{digest}")),
        ]);
        assert!(errors(|c| c.image_refs("refs", &good)).is_empty());
        let bad = refs(&[
            ("hetzner", "ubuntu-24.04"),
            ("fly", "registry.fly.io/agent:latest"),
            ("aws", "ami"),
        ]);
        assert_eq!(
            errors(|c| c.image_refs("refs", &bad)),
            ["refs.aws", "refs.fly", "refs.hetzner"]
        );
        assert_eq!(errors(|c| c.image_refs("refs", &BTreeMap::new())), ["refs"]);
    }
}
