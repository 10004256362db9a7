//! The ONNX Runtime side: sessions for a bundle, the block chain, and whole-volume prediction.

pub mod chain;
pub mod session;

pub use session::{ExecutionProvider, SessionOptions, Sessions};
