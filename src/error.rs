//! The one error type of the `autopath` library: every variant says which file or which input is at fault.

use std::path::{Path, PathBuf};

/// What is wrong with a NIfTI file. Kept apart from the path so that tests and callers can match the
/// reason while users read `path: reason`.
// Each variant and field is described by its #[error] message.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum VolumeError {
    #[error("not a NIfTI-1 file (bad magic {0:?}; expected \"n+1\" or \"ni1\")")]
    BadMagic([u8; 4]),
    #[error("header says sizeof_hdr = {0}, NIfTI-1 requires 348")]
    BadHeaderSize(i32),
    #[error("file ends inside the {what}: expected {expected} bytes, found {found}")]
    Truncated { what: &'static str, expected: u64, found: u64 },
    #[error("gzip stream is corrupt or truncated: {0}")]
    Gzip(String),
    #[error("header field dim = {dims:?} is not a 3D image (or 4D with one time point)")]
    NotThreeD { dims: Vec<u16> },
    #[error("header field dim = {dims:?} has a zero extent")]
    ZeroExtent { dims: Vec<u16> },
    #[error("header claims {voxels} voxels ({dims:?}), over the limit of {limit}; raise --max-voxels if this is real")]
    TooManyVoxels { dims: Vec<u16>, voxels: u64, limit: u64 },
    #[error("unsupported datatype code {0} (supported: uint8, int16, uint16, int32, float32, float64)")]
    UnsupportedDatatype(i16),
    #[error("header field bitpix = {bitpix} does not match datatype {datatype} ({expected} bits)")]
    BitpixMismatch { datatype: i16, bitpix: i16, expected: i16 },
    #[error("header field vox_offset = {0} is invalid (must be a whole number >= 352 in a .nii file)")]
    BadVoxOffset(f32),
    #[error("header field pixdim = {0:?} has a non-finite or non-positive spacing")]
    BadPixdim([f32; 3]),
    #[error("header field {field} is not finite")]
    NonFiniteField { field: &'static str },
    #[error("{count} voxels are NaN or infinite (first at index {first}); `--nan zero` or `--nan min` replaces them")]
    NonFiniteVoxels { count: usize, first: usize },
    #[error("separate .hdr/.img pairs are not supported; convert to a single .nii or .nii.gz")]
    HeaderPair,
}

/// Errors of the `autopath` library.
#[allow(missing_docs)] // described by the #[error] messages
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {kind}", path.display())]
    Volume { path: PathBuf, kind: VolumeError },
    /// A DICOM file or series that cannot be read as one volume, with the reason.
    #[error("{}: {reason}", path.display())]
    Dicom { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset {}: {reason}", root.display())]
    Dataset { root: PathBuf, reason: String },
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    /// What a caller asked of a loaded bundle cannot be done (a mask of the wrong length, a budget out
    /// of range): the request's fault, 4xx over HTTP, where every other failure is the server's.
    #[error("{what}: {reason}")]
    Request { what: &'static str, reason: String },
    #[error("bundle {}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    #[error("ONNX Runtime: {0}")]
    OnnxRuntime(String),
    /// An ONNX Runtime call failed; `what` says which.
    #[error("ONNX Runtime: {what}: {source}")]
    Ort { what: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// A Candle computation failed (training, evaluation, compile's reference); `what` says which.
    #[cfg(feature = "train")]
    #[error("{what}: {source}")]
    Candle { what: &'static str, source: candle_core::Error },
    /// A checkpoint file could not be read or written by Candle.
    #[cfg(feature = "train")]
    #[error("checkpoint {}: {source}", path.display())]
    Checkpoint { path: PathBuf, source: candle_core::Error },
    #[error("{}: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// The ONNX exporter could not read the model.
    #[cfg(feature = "train")]
    #[error("compile: {0}")]
    Export(#[from] autopath_export::Error),
}

impl From<autopath_bundle::BundleError> for Error {
    fn from(e: autopath_bundle::BundleError) -> Self {
        use autopath_bundle::BundleError as B;
        match e {
            B::Invalid { path, reason } => Error::Bundle { path, reason },
            B::Setting { what, reason } => Error::InvalidArgument { what, reason },
            B::Request { what, reason } => Error::Request { what, reason },
        }
    }
}

/// Result with the library's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Attaches a path to an I/O error.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A volume error located at a file.
    pub fn volume(path: impl AsRef<Path>, kind: VolumeError) -> Self {
        Error::Volume { path: path.as_ref().to_path_buf(), kind }
    }

    /// A DICOM file or series refused, with the reason.
    pub fn dicom(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::Dicom { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }

    /// A bad argument, with the reason.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { what, reason: reason.into() }
    }

    /// An ONNX Runtime failure in `what`, keeping its cause.
    pub fn ort(what: impl std::fmt::Display, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Ort { what: what.to_string(), source: source.into() }
    }

    /// A Candle failure in `what`, keeping its cause.
    #[cfg(feature = "train")]
    pub fn candle(what: &'static str) -> impl Fn(candle_core::Error) -> Self {
        move |source| Error::Candle { what, source }
    }

    /// A request the loaded bundle cannot serve, with the reason.
    pub fn request(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Request { what, reason: reason.into() }
    }

    /// Whether the caller's input caused it (a volume that cannot be read, an impossible request):
    /// HTTP answers those with 4xx and everything else with 500.
    pub fn is_caller_fault(&self) -> bool {
        matches!(self, Error::Volume { .. } | Error::Dicom { .. } | Error::Request { .. })
    }

    /// The reason a volume was refused, when that is what went wrong.
    pub fn volume_kind(&self) -> Option<&VolumeError> {
        match self {
            Error::Volume { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
