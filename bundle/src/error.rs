//! The contract's one error type.

use std::path::PathBuf;

/// What is wrong with a bundle, a setting of its input contract, or a request made of it.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle folder cannot be used: a file is missing or modified, the manifest is malformed.
    #[error("bundle {}: {reason}", path.display())]
    Invalid {
        /// The bundle folder.
        path: PathBuf,
        /// What is wrong, naming the file or manifest field.
        reason: String,
    },
    /// A setting is out of its range (a tile with a zero extent, an overlap of 1).
    #[error("invalid {what}: {reason}")]
    Setting {
        /// Which setting.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// What a caller asked of a loaded bundle cannot be done (a budget below every calibrated spend).
    #[error("{what}: {reason}")]
    Request {
        /// Which request.
        what: &'static str,
        /// Why it cannot be served.
        reason: String,
    },
}

/// Result with the contract's error.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;

impl BundleError {
    pub(crate) fn invalid(path: &std::path::Path, reason: impl Into<String>) -> Self {
        BundleError::Invalid { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn setting(what: &'static str, reason: impl Into<String>) -> Self {
        BundleError::Setting { what, reason: reason.into() }
    }

    pub(crate) fn request(what: &'static str, reason: impl Into<String>) -> Self {
        BundleError::Request { what, reason: reason.into() }
    }
}
