//! Helpers for the cross-crate tests in `tests/`.

use std::path::PathBuf;

/// Returns the cub50 dataset folder: `$METAIRNET_CUB50` when set, else `../shared/data/cub50`
/// beside the repository.
pub fn cub50_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("METAIRNET_CUB50") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cub50")
}
