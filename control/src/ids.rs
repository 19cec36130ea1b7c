//! Identifiers: a short type prefix and a ULID, so ids sort by creation time and a support
//! engineer can tell an Agent id from an account id at a glance.

/// Prefixes of the ids control hands out.
pub mod prefix {
    pub const ACCOUNT: &str = "acc";
    pub const AGENT: &str = "agt";
    pub const EVENT: &str = "evt";
    pub const IMAGE: &str = "img";
    pub const JOB: &str = "job";
    pub const PERIOD: &str = "per";
    pub const PLAIN_VM: &str = "pvm";
    pub const REQUEST: &str = "req";
    pub const TOKEN: &str = "tok";
    pub const VAULT_KEY: &str = "key";
}

/// A new time-ordered id such as `agt_01JDQ6V9X8RTS5N0Z5G8K2M4PQ`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::generate())
}

/// Whether `text` could be an id with `prefix` (used to answer 404 without a lookup for text
/// that is not an id at all).
pub fn looks_like(prefix: &str, text: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|ulid| ulid.len() == 26 && ulid.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `text` has the shape of any id control hands out (`xyz_` and a ULID).
pub fn is_id(text: &str) -> bool {
    text.split_once('_').is_some_and(|(prefix, _)| {
        prefix.len() == 3
            && prefix.bytes().all(|b| b.is_ascii_lowercase())
            && looks_like(prefix, text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_time() {
        let a = new_id(prefix::AGENT);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id(prefix::AGENT);
        assert!(looks_like(prefix::AGENT, &a));
        assert!(!looks_like(prefix::ACCOUNT, &a));
        assert!(is_id(&a));
        for bad in [
            "",
            "agt_",
            "agt_\0",
            "AGT_01JDQ6V9X8RTS5N0Z5G8K2M4PQ",
            "agt_01JDQ6V9X8RTS5N0Z5G8K2M4P\0",
        ] {
            assert!(!is_id(bad), "{bad:?}");
        }
        assert!(a < b);
    }
}
