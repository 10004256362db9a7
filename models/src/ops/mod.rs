//! Differentiable 3D operations that Candle 0.11 lacks.

pub mod batch_norm;
pub mod conv3d;

pub use conv3d::{conv3d, Conv3dParams};
