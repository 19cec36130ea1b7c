//! Labels as Hetzner validates them, and its label selector language (`k=v`, `k==v`, `k!=v`, `k`,
//! `!k`, `k in (a,b)`, `k notin (a,b)`, comma = AND). A selector that does not parse is an
//! `invalid_input`, never a silent match-all: a client bug must show up against the fake.

use std::collections::BTreeMap;

/// One resource's labels.
pub(crate) type Labels = BTreeMap<String, String>;

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A label value, or the name part of a key: at most 63 characters of `[a-zA-Z0-9._-]`, starting
/// and ending alphanumeric.
fn valid_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| is_alnum(c) || matches!(c, '.' | '_' | '-'))
        && s.chars().next().is_some_and(is_alnum)
        && s.chars().last().is_some_and(is_alnum)
}

fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 253
        && prefix.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn valid_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            valid_prefix(prefix) && valid_name(name) && !prefix.ends_with("hetzner.cloud")
        }
        None => valid_name(key),
    }
}

/// Checks labels as Hetzner does; the error names the first offending key.
pub(crate) fn validate(labels: &Labels) -> Result<(), String> {
    for (key, value) in labels {
        if !valid_key(key) {
            return Err(format!("label key '{key}' is invalid"));
        }
        if !(value.is_empty() || valid_name(value)) {
            return Err(format!("label value '{value}' of key '{key}' is invalid"));
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector: every term must match (comma = AND).
#[derive(Debug)]
pub(crate) struct Selector(Vec<Term>);

impl Selector {
    pub(crate) fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for raw in split_top_level(text)? {
            terms.push(
                parse_term(raw.trim())
                    .ok_or_else(|| format!("invalid label selector term '{}'", raw.trim()))?,
            );
        }
        Ok(Selector(terms))
    }

    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|term| match term {
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
        })
    }
}

/// Splits on the commas that are not inside a `( … )` set.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("unbalanced ')' in label selector")?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '(' in label selector".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_term(term: &str) -> Option<Term> {
    let key_ok = |k: &str| !k.is_empty() && valid_key(k);
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return key_ok(key).then(|| Term::Absent(key.to_owned()));
    }
    if let Some(open) = term.find('(') {
        let close = term.strip_suffix(')')?;
        let head = term[..open].trim();
        let values: Vec<String> = close[open + 1..]
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect();
        if values.iter().any(|v| !(v.is_empty() || valid_name(v))) {
            return None;
        }
        let (key, op) = head.rsplit_once(char::is_whitespace)?;
        let key = key.trim();
        if !key_ok(key) {
            return None;
        }
        return match op {
            "in" => Some(Term::In(key.to_owned(), values)),
            "notin" => Some(Term::NotIn(key.to_owned(), values)),
            _ => None,
        };
    }
    let value_ok = |v: &str| v.is_empty() || valid_name(v);
    for (op, ne) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((key, value)) = term.split_once(op) {
            let (key, value) = (key.trim(), value.trim());
            if !key_ok(key) || !value_ok(value) {
                return None;
            }
            let (key, value) = (key.to_owned(), value.to_owned());
            return Some(if ne {
                Term::Ne(key, value)
            } else {
                Term::Eq(key, value)
            });
        }
    }
    key_ok(term).then(|| Term::Exists(term.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_form_of_selector_matches_as_documented() {
        let l = labels(&[
            ("env", "prod"),
            ("tier", "web"),
            ("example.com/agent", "a1"),
        ]);
        let yes = [
            "env=prod",
            "env==prod",
            "env!=dev",
            "env",
            "!missing",
            "tier in (web,db)",
            "tier notin (db, cache)",
            "missing notin (x)",
            "env=prod,tier=web",
            "example.com/agent=a1",
            " env = prod , tier in ( web ) ",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s} should match");
        }
        let no = [
            "env=dev",
            "env!=prod",
            "!env",
            "missing",
            "tier in (db)",
            "tier notin (web)",
            "env=prod,tier=db",
        ];
        for s in no {
            assert!(
                !Selector::parse(s).unwrap().matches(&l),
                "{s} should not match"
            );
        }
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for s in [
            "",
            "=x",
            "env=(",
            "tier in (web",
            "tier within (a)",
            "a b",
            "env=-x",
            "!",
        ] {
            assert!(Selector::parse(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn labels_are_validated_like_hetzner() {
        assert!(validate(&labels(&[("a", ""), ("example.com/k-1", "v.1_x")])).is_ok());
        for bad in [
            ("-a", "v"),
            ("a", "-v"),
            ("a", &"x".repeat(64)),
            ("hetzner.cloud/x", "v"),
            ("A_b/c", "v"),
        ] {
            assert!(
                validate(&labels(&[bad])).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
