//! Trilinear resizing with `align_corners = True`, as separable matrix products (differentiable).

use candle_core::{DType, Device, Result, Tensor};

/// `[n_in, n_out]` matrix whose column j holds the linear-interpolation weights of output j, with
/// corners aligned: output 0 ↔ input 0, output n_out−1 ↔ input n_in−1.
pub fn trilinear_matrix(n_in: usize, n_out: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f64; n_in * n_out];
    for j in 0..n_out {
        let src = if n_out > 1 { j as f64 * (n_in - 1) as f64 / (n_out - 1) as f64 } else { 0.0 };
        let lo = (src.floor() as usize).min(n_in - 1);
        let hi = (lo + 1).min(n_in - 1);
        let t = src - lo as f64;
        m[lo * n_out + j] += 1.0 - t;
        m[hi * n_out + j] += t;
    }
    Tensor::from_vec(m, (n_in, n_out), device)?.to_dtype(dtype)
}

/// Resizes `[N, C, D, H, W]` to `size` with trilinear interpolation (align_corners = True).
pub fn resize_trilinear(x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    if [d, h, w] == size {
        return Ok(x.clone());
    }
    let (dt, dev) = (x.dtype(), x.device());
    // W: [..., W] × [W, W'].
    let x = x.reshape((n * c * d * h, w))?.matmul(&trilinear_matrix(w, size[2], dt, dev)?)?;
    // H: bring H last.
    let x = x.reshape((n * c * d, h, size[2]))?.transpose(1, 2)?.contiguous()?;
    let x = x.reshape((n * c * d * size[2], h))?.matmul(&trilinear_matrix(h, size[1], dt, dev)?)?;
    let x = x.reshape((n * c * d, size[2], size[1]))?.transpose(1, 2)?.contiguous()?; // [NCD, H', W']
                                                                                      // D: bring D last.
    let x = x.reshape((n * c, d, size[1] * size[2]))?.transpose(1, 2)?.contiguous()?;
    let x = x.reshape((n * c * size[1] * size[2], d))?.matmul(&trilinear_matrix(d, size[0], dt, dev)?)?;
    let x = x.reshape((n * c, size[1] * size[2], size[0]))?.transpose(1, 2)?.contiguous()?;
    x.reshape((n, c, size[0], size[1], size[2]))
}
