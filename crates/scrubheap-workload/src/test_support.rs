//! Helpers shared by the unit tests.

use std::path::{Path, PathBuf};

/// The traces folder (`SCRUBHEAP_TRACES`, else `../shared/traces` beside the repository),
/// or `None` with a message when it is absent.
pub(crate) fn traces_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SCRUBHEAP_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/traces"));
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        println!("skipped: no traces folder at {}", dir.display());
        None
    }
}
