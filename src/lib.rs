//! AutoPath: image-specific 3D segmentation. A policy network picks, per volume, which residual blocks
//! of a 3D DeepLab V3 to run; the runtime executes only those.
//!
//! The tree follows the three jobs: [`input`] (volumes, preprocessing, windows, the bundle contract),
//! [`deploy`] (ONNX Runtime, the chain, the runtime and `serve`: no Candle, so `autopath-run` links no
//! training stack) and `study` (data, training, compile, evaluation, benchmark, demo; behind the
//! `train` feature, with `autopath-models` and `autopath-export`).
#![warn(clippy::unwrap_used)]
#![deny(missing_docs)]

pub mod atomic;
pub mod cli;
pub mod deploy;
pub mod error;
pub mod input;
pub mod labels;
#[cfg(feature = "train")]
pub mod study;

pub use error::{Error, Result, VolumeError};
