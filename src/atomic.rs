//! Outputs appear whole or not at all: write under a hidden temporary name beside the target, then rename.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes a file through `write`, which receives a temporary path in the same directory (so the final
/// rename is atomic on one file system). The temporary keeps the target's extensions, since writers such
/// as NIfTI's choose compression by name. On any error the temporary is removed and the target untouched.
pub fn write_atomically<F>(target: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let tmp = temporary_sibling(target);
    let outcome = write(&tmp).and_then(|()| std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e)));
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// Writes bytes atomically.
pub fn write_bytes_atomically(target: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(target, |tmp| std::fs::write(tmp, bytes).map_err(|e| Error::io(target, e)))
}

/// `dir/name.nii.gz` → `dir/.tmp-<pid>-<n>-name.nii.gz`: hidden, unique per process and call, same extensions.
pub fn temporary_sibling(target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    target.with_file_name(format!(".tmp-{}-{}-{}", std::process::id(), n, name))
}
