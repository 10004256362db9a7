//! The ONNX Runtime side: sessions for a bundle, the block chain, and whole-volume prediction.

pub mod batch;
pub mod chain;
pub mod gpu;
pub mod memory;
pub mod predict;
pub mod session;

pub use predict::{PathChoice, Predictor, VolumeReport};
pub use session::{CudnnSearch, ExecutionProvider, IoBindingMode, Residency, SessionOptions, Sessions};
