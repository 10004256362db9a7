//! Training and evaluation drivers (behind the `train` feature): they read data with this crate's
//! volume and preprocessing code and hand tensors to `autopath-models`.

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod device_check;
pub mod infer;
pub mod policy;
pub mod segment;

pub use crate::labels::dice;
