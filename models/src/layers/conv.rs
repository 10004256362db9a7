//! 3D convolution and 2×2×2 transposed convolution layers.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::ops::{conv3d, Conv3dParams};

/// A 3D convolution, optionally with bias. Weights `[Co, Ci, kd, kh, kw]` as PyTorch.
#[derive(Debug, Clone)]
pub struct Conv3d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv3dParams,
}

impl Conv3d {
    /// Creates or loads `weight` (Kaiming-normal, fan-out, as torchvision's ResNet) and `bias` (zeros).
    pub fn load(
        vb: VarBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: [usize; 3],
        params: Conv3dParams,
        bias: bool,
    ) -> Result<Self> {
        let fan_out = (out_ch * kernel.iter().product::<usize>()) as f64;
        let init = Init::Randn { mean: 0.0, stdev: (2.0 / fan_out).sqrt() };
        let weight = vb.get_with_hints((out_ch, in_ch, kernel[0], kernel[1], kernel[2]), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_ch, "bias", Init::Const(0.0))?) } else { None };
        Ok(Conv3d { weight, bias, params })
    }

    /// Weight `[Co, Ci, kd, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias `[Co]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Stride, padding, dilation.
    pub fn params(&self) -> Conv3dParams {
        self.params
    }

    /// The same layer with its tensors in `dtype` (an f64 copy is the compiler's parity reference).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Conv3d {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.as_ref().map(|b| b.to_dtype(dtype)).transpose()?,
            params: self.params,
        })
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv3d(x, &self.weight, self.params)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Transposed convolution with kernel 2 and stride 2 (the decoder's upsampling), no bias.
/// Weight `[Ci, Co, 2, 2, 2]` as PyTorch's `ConvTranspose3d`.
///
/// With kernel = stride every input voxel owns its own 2×2×2 output block, so the op is one matrix
/// product `[N·P, Ci] × [Ci, Co·8]` followed by a reshape that interleaves the blocks.
#[derive(Debug, Clone)]
pub struct ConvTranspose3d {
    weight: Tensor,
}

impl ConvTranspose3d {
    /// Creates or loads the weight.
    pub fn load(vb: VarBuilder, in_ch: usize, out_ch: usize) -> Result<Self> {
        let init = Init::Randn { mean: 0.0, stdev: (2.0 / (out_ch * 8) as f64).sqrt() };
        Ok(ConvTranspose3d { weight: vb.get_with_hints((in_ch, out_ch, 2, 2, 2), "weight", init)? })
    }

    /// Weight `[Ci, Co, 2, 2, 2]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The same layer with its weight in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(ConvTranspose3d { weight: self.weight.to_dtype(dtype)? })
    }
}

impl Module for ConvTranspose3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, ci, d, h, w) = x.dims5()?;
        let co = self.weight.dim(1)?;
        let cols = x.permute((0, 2, 3, 4, 1))?.reshape((n * d * h * w, ci))?;
        let y = cols.matmul(&self.weight.reshape((ci, co * 8))?)?; // [N·D·H·W, Co·2·2·2]
                                                                   // [N, D, H, W, Co, 2, 2, 2] → [N, Co, D, 2, H, 2, W, 2] → [N, Co, 2D, 2H, 2W]
        let y = y.reshape(vec![n, d, h, w, co, 2, 2, 2])?;
        let y = y.permute(vec![0, 4, 1, 5, 2, 6, 3, 7])?.contiguous()?;
        y.reshape((n, co, 2 * d, 2 * h, 2 * w))
    }
}
