//! Deployment: what `autopath-run` and `serve` are made of, and nothing that needs Candle — the ONNX
//! Runtime library, sessions for a bundle, the block chain, whole-volume prediction, batches of files,
//! and the HTTP service.

pub mod audit;
pub mod batch;
pub mod chain;
pub mod gpu;
pub mod heap;
pub mod inspect;
pub mod joined;
pub mod memory;
pub mod network;
pub mod ort_library;
pub mod predict;
pub mod replay;
#[cfg(feature = "serve")]
pub mod serve;
pub mod session;

pub use network::Route;
pub use predict::{Budget, PathChoice, Predictor, PredictorOptions, VolumeReport};
pub use session::{CudnnSearch, ExecutionProvider, IoBindingMode, Residency, SessionOptions, Sessions};
