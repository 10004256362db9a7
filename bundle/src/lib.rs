//! The contract between `autopath compile` and everything that reads a bundle: the typed
//! `manifest.json` ([`manifest`]), the graphs' file, input and output names ([`names`]), the FLOP
//! arithmetic of a path ([`cost`]), the guard for unfamiliar volumes ([`guard`]), the input contract's settings ([`input`]) and loading a bundle
//! folder with its checks ([`load`]). Serde only: no Candle, no ONNX Runtime, so the exporter, the
//! models and the runtime can all depend on it.
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod cost;
pub mod error;
pub mod guard;
pub mod input;
pub mod load;
pub mod manifest;
pub mod names;

pub use cost::{BlockTime, BudgetPoint, MeasuredCost, PathCost};
pub use error::{BundleError, Result};
pub use guard::Guard;
pub use input::{Blend, Intensity, LabelMapping, Preprocessing, WindowConfig};
pub use load::{sha256_hex, Bundle};
pub use manifest::{
    Activation, Architecture, BlockEntry, BlockKind, Conv3dLayout, Decoder, FileEntry, InputContract, LowLevel,
    Manifest, PathGraph, PolicyEntry, PolicyMethod, PolicyTraining, Precision, Producer, SplitHead, StemForm,
    SCHEMA_VERSION,
};
