//! End-to-end tests of the workspace's real binaries live in `tests/`; this library only holds
//! what they share beyond `test-support`.

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
