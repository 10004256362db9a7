//! Building blocks as named structs with `load(vb, …)` and `forward`: the exporter walks them and
//! checkpoints name their tensors the same way (`stage2.block1.conv2.weight`).

mod batchnorm;
mod conv;
mod dropout;
mod interpolate;
mod pool;

pub use batchnorm::{precise_statistics, BatchNorm3d, MOMENTUM};
pub use conv::{Conv3d, ConvTranspose3d};
pub use dropout::Dropout;
pub use interpolate::{resize_trilinear, resize_trilinear_composed, trilinear_matrix, trilinear_taps};
pub use pool::{global_avg_pool, max_pool3d, MaxPool3dParams};

use candle_core::Var;

/// Non-trainable state (BatchNorm running statistics) saved in checkpoints beside the parameters.
pub trait Buffers {
    /// Appends `(full name, variable)` for every buffer of this module and its children.
    fn buffers(&self, out: &mut Vec<(String, Var)>);
}
