//! AutoPath: image-specific 3D segmentation. A policy network picks, per volume, which residual blocks
//! of a 3D DeepLab V3 to run; the runtime executes only those.
//!
//! This crate holds everything that does not need Candle (volumes, datasets, preprocessing, sliding
//! windows, synthetic data, the ONNX Runtime side), so the deployable `autopath-run` links no training
//! stack. Training and compiling live in `autopath-models` / `autopath-export`, behind the `train`
//! feature.
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod atomic;
pub mod bench;
pub mod bundle;
pub mod cli;
#[cfg(feature = "train")]
pub mod compile;
pub mod dataset;
#[cfg(feature = "train")]
pub mod demo;
pub mod error;
#[cfg(feature = "train")]
pub mod eval;
#[cfg(feature = "train")]
pub mod figures;
pub mod labels;
pub mod onnxruntime;
pub mod paths;
pub mod preprocess;
pub mod runtime;
#[cfg(feature = "train")]
pub mod search;
#[cfg(feature = "serve")]
pub mod serve;
pub mod synth;
#[cfg(feature = "train")]
pub mod train;
pub mod volume;
pub mod window;

pub use error::{Error, Result, VolumeError};
