//! Reading a bundle folder: the schema version first, then the manifest, every file's SHA-256, every
//! graph the architecture uses listed, and the manifest's values validated.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{BundleError, Result};
use crate::manifest::{Manifest, SCHEMA_VERSION};
use crate::names::MANIFEST;

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A loaded, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`, identifying the bundle (e.g. for TensorRT caches).
    pub hash: String,
}

impl Bundle {
    /// Reads `manifest.json`, checks the schema, and verifies every listed file's checksum.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let mpath = dir.join(MANIFEST);
        let bytes = std::fs::read(&mpath).map_err(|e| BundleError::invalid(dir, format!("{MANIFEST}: {e}")))?;
        let version =
            serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["schema_version"].as_u64());
        match version {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(BundleError::invalid(
                    dir,
                    format!(
                        "manifest schema version {v} is not supported (this autopath reads version {SCHEMA_VERSION})"
                    ),
                ))
            }
            None => return Err(BundleError::invalid(dir, "manifest.json is not a valid manifest (no schema_version)")),
        }
        // The field's path in the message (`architecture.decoder: unknown variant …`), not just a column.
        let manifest: Manifest = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
            .map_err(|e| BundleError::invalid(dir, format!("{MANIFEST}: {}: {}", e.path(), e.inner())))?;
        verify_files(dir, &manifest)?;
        manifest.validate().map_err(|reason| BundleError::invalid(dir, format!("{MANIFEST}: {reason}")))?;
        Ok(Bundle { dir: dir.to_path_buf(), manifest, hash: sha256_hex(&bytes) })
    }

    /// Path of a bundle file.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Every listed file is a plain name whose content has its checksum, and every graph the manifest uses
/// is listed.
fn verify_files(dir: &Path, manifest: &Manifest) -> Result<()> {
    for (name, entry) in &manifest.files {
        if name.contains('/') || name.contains("..") {
            return Err(BundleError::invalid(dir, format!("file name {name:?} is not a plain name")));
        }
        let data = std::fs::read(dir.join(name)).map_err(|e| BundleError::invalid(dir, format!("{name}: {e}")))?;
        let got = sha256_hex(&data);
        if got != entry.sha256 {
            return Err(BundleError::invalid(
                dir,
                format!(
                    "{name}: checksum mismatch (manifest {}, file {got}); the bundle was modified or is incomplete",
                    entry.sha256
                ),
            ));
        }
    }
    let mut used = manifest.architecture.files();
    used.extend(manifest.policy.as_ref().map(|p| &p.file));
    match used.into_iter().find(|f| !manifest.files.contains_key(*f)) {
        Some(f) => Err(BundleError::invalid(dir, format!("{f} is used but not listed with a checksum"))),
        None => Ok(()),
    }
}
