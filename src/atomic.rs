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

/// Removes the temporaries a killed writer left in `dir`: ours (`.tmp-<pid>-…`) and those of the
/// safetensors writer, which stages every file as `.tmpXXXXXX` beside it (outside our rename, so a
/// kill during a checkpoint leaves one). A run folder is written by one process at a time, so on
/// resume every such file is stale.
pub fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let stale = entry.file_name().to_str().is_some_and(|n| n.starts_with(".tmp"));
        if stale && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [".tmpIhemYS", ".tmp-77-3-last.safetensors", "last.json", "best.safetensors", "tmp.txt"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join(".tmpdir")).expect("mkdir");
        remove_stale_temporaries(dir.path()).expect("clean");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".tmpdir", "best.safetensors", "last.json", "tmp.txt"]);
    }
}
