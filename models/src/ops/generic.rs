//! 3D convolution and max pooling composed from Candle operations that run on every device.
//!
//! Why: the fast kernels in [`super::conv3d`] and `layers::pool` are CPU custom ops, and
//! Candle has no 3D convolution or pooling of its own. These compositions give CUDA (and any later
//! backend) a path whose gradients come from Candle's autograd, so they are right by construction and
//! can be checked against the CPU kernels on the CPU, where no GPU is needed.
//!
//! - Convolution: one 2D convolution per depth tap. The input planes a tap reads (`z·s + a·d − p` for
//!   output depth `z`) are gathered with `index_select`, depth is folded into the batch, and the taps'
//!   outputs are summed. Candle's 2D convolution takes one stride and dilation for both in-plane
//!   axes, which is what every layer of the networks uses.
//! - Max pooling: separable, one axis at a time; each axis is a running maximum over the window's taps,
//!   gathered as strided planes from a copy padded with −∞.

use candle_core::{bail, DType, Result, Tensor};

use super::params::{Conv3dParams, MaxPool3dParams};

/// 3D convolution without bias, `[N, Ci, D, H, W]` × `[Co, Ci, kd, kh, kw]` → `[N, Co, D', H', W']`,
/// differentiable in both arguments on any device.
pub fn conv3d_taps(x: &Tensor, w: &Tensor, p: Conv3dParams) -> Result<Tensor> {
    let (n, ci, d, h, wd) = x.dims5()?;
    let (co, wci, kd, kh, kw) = w.dims5()?;
    if ci != wci {
        bail!("conv3d: input has {ci} channels, weight expects {wci}")
    }
    if p.stride[1] != p.stride[2] || p.dilation[1] != p.dilation[2] {
        bail!("conv3d: the composed path needs equal stride and dilation in H and W, got {p:?}")
    }
    let out = p.out_dims([d, h, wd], [kd, kh, kw])?;
    // Pad every axis here and keep only the extent the windows read: Candle's 2D convolution backward
    // derives its output padding from the height alone, so both in-plane axes must be read exactly.
    let mut padded = x.clone();
    for (axis, k) in [(2, kd), (3, kh), (4, kw)] {
        let a = axis - 2;
        let read = (out[a] - 1) * p.stride[a] + p.dilation[a] * (k - 1) + 1;
        padded = padded.pad_with_zeros(axis, p.padding[a], p.padding[a])?.narrow(axis, 0, read)?;
    }
    let padded = padded.contiguous()?;
    let (h, wd) = (padded.dim(3)?, padded.dim(4)?);
    let mut sum: Option<Tensor> = None;
    for a in 0..kd {
        let planes: Vec<u32> = (0..out[0]).map(|z| (z * p.stride[0] + a * p.dilation[0]) as u32).collect();
        let idx = Tensor::new(planes.as_slice(), x.device())?;
        // [N, Ci, D', H, W] → [N·D', Ci, H, W]
        let xa = padded.index_select(&idx, 2)?.permute((0, 2, 1, 3, 4))?.reshape((n * out[0], ci, h, wd))?;
        let wa = w.narrow(2, a, 1)?.squeeze(2)?.contiguous()?;
        let ya = xa.conv2d(&wa, 0, p.stride[1], p.dilation[1], 1)?;
        sum = Some(match sum {
            Some(s) => (s + ya)?,
            None => ya,
        });
    }
    let Some(y) = sum else { bail!("conv3d: empty kernel") };
    // [N·D', Co, H', W'] → [N, Co, D', H', W']
    y.reshape((n, out[0], co, out[1], out[2]))?.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// Max pooling over `[N, C, D, H, W]` with −∞ padding, differentiable on any device. The gradient of
/// a window goes to its maximum (split evenly on exact ties, where the CPU op picks the first).
pub fn max_pool3d_taps(x: &Tensor, p: MaxPool3dParams) -> Result<Tensor> {
    let out = p.out_dims([x.dim(2)?, x.dim(3)?, x.dim(4)?])?;
    let mut y = x.clone();
    for (axis, &o) in out.iter().enumerate() {
        y = max_along(&y, axis + 2, p.kernel[axis], p.stride[axis], p.padding[axis], o)?;
    }
    Ok(y)
}

/// The running maximum over `kernel` taps along `dim`, stepping by `stride`, after `padding` −∞ planes
/// on both sides.
fn max_along(x: &Tensor, dim: usize, kernel: usize, stride: usize, padding: usize, out: usize) -> Result<Tensor> {
    let padded = if padding > 0 {
        let mut shape = x.dims().to_vec();
        shape[dim] = padding;
        let low = Tensor::full(f64::NEG_INFINITY, shape.as_slice(), x.device())?.to_dtype(x.dtype())?;
        Tensor::cat(&[&low, x, &low], dim)?
    } else {
        x.clone()
    };
    let mut best: Option<Tensor> = None;
    for t in 0..kernel {
        let planes: Vec<u32> = (0..out).map(|o| (o * stride + t) as u32).collect();
        let tap = padded.index_select(&Tensor::new(planes.as_slice(), x.device())?, dim)?;
        best = Some(match best {
            Some(b) => b.maximum(&tap)?,
            None => tap,
        });
    }
    match best {
        Some(b) if b.dtype() == DType::F32 || b.dtype() == DType::F64 => Ok(b),
        Some(b) => bail!("max_pool3d: unsupported dtype {:?}", b.dtype()),
        None => bail!("max_pool3d: empty window"),
    }
}
