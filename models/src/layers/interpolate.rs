//! Trilinear resizing with `align_corners = True`, differentiable: a CPU kernel of separable 1-D
//! passes, and the same as matrix products on other devices.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per output index along one axis, with corners aligned (output 0 ↔ input 0, output n_out−1 ↔
/// input n_in−1): the two inputs it interpolates and their weights. The one definition of the
/// weights: the CPU kernel, the matrix-product form and the compiler's graphs all read it, so that
/// Candle and the exported ONNX resize alike.
pub fn trilinear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f64, f64)> {
    (0..n_out)
        .map(|j| {
            let src = if n_out > 1 { j as f64 * (n_in - 1) as f64 / (n_out - 1) as f64 } else { 0.0 };
            let lo = (src.floor() as usize).min(n_in - 1);
            let t = src - lo as f64;
            (lo, (lo + 1).min(n_in - 1), 1.0 - t, t)
        })
        .collect()
}

/// `[n_in, n_out]` matrix whose column j holds the interpolation weights of output j
/// ([`trilinear_taps`]).
pub fn trilinear_matrix(n_in: usize, n_out: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f64; n_in * n_out];
    for (j, (lo, hi, a, b)) in trilinear_taps(n_in, n_out).into_iter().enumerate() {
        m[lo * n_out + j] += a;
        m[hi * n_out + j] += b;
    }
    Tensor::from_vec(m, (n_in, n_out), device)?.to_dtype(dtype)
}

/// Resizes `[N, C, D, H, W]` to `size` with trilinear interpolation (align_corners = True). On the CPU
/// a custom op of three 1-D passes (forward) and their adjoints (backward); elsewhere
/// [`resize_trilinear_composed`], which `tests/generic.rs` checks it against.
pub fn resize_trilinear(x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
    let (_, _, d, h, w) = x.dims5()?;
    if [d, h, w] == size {
        return Ok(x.clone());
    }
    if !crate::ops::cpu_kernels(x) {
        return resize_trilinear_composed(x, size);
    }
    x.contiguous()?.apply_op1(Resize { from: [d, h, w], to: size })
}

/// The matrix-product form: device-generic, and how CUDA resizes.
///
/// Why the CPU does not use it: each axis is a dense product (n_in multiplications per output
/// where 2 suffice) and moving an axis last costs a strided copy each way.
pub fn resize_trilinear_composed(x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
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

/// [`trilinear_taps`] in the kernel's element type.
fn taps<T: Real>(n_in: usize, n_out: usize) -> Vec<(usize, usize, T, T)> {
    trilinear_taps(n_in, n_out).into_iter().map(|(lo, hi, a, b)| (lo, hi, T::of(a), T::of(b))).collect()
}

/// Element types of the resize kernel.
trait Real: Copy + Send + Sync + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    fn of(v: f64) -> Self;
}
impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
}

/// One axis of `[outer, n_in, inner]` → `[outer, n_out, inner]`: `y[o, j] = (1 − t)·x[o, lo] + t·x[o, hi]`
/// with the inner axis contiguous (vectorised). Parallel over `outer`.
fn pass<T: Real>(x: &[T], n_in: usize, inner: usize, n_out: usize) -> Vec<T> {
    let taps = taps::<T>(n_in, n_out);
    let mut y = vec![T::default(); x.len() / n_in * n_out];
    y.par_chunks_mut(n_out * inner).zip(x.par_chunks(n_in * inner)).for_each(|(ys, xs)| {
        for (row, &(lo, hi, a, b)) in ys.chunks_mut(inner).zip(&taps) {
            let (l, h) = (&xs[lo * inner..(lo + 1) * inner], &xs[hi * inner..(hi + 1) * inner]);
            for ((v, &p), &q) in row.iter_mut().zip(l).zip(h) {
                *v = a * p + b * q;
            }
        }
    });
    y
}

/// The adjoint of [`pass`]: `g_in[o, lo] += (1 − t)·g[o, j]`, `g_in[o, hi] += t·g[o, j]`, in `j` order
/// within each `o` (deterministic). Parallel over `outer`.
fn pass_adjoint<T: Real>(g: &[T], n_in: usize, inner: usize, n_out: usize) -> Vec<T> {
    let taps = taps::<T>(n_in, n_out);
    let mut gx = vec![T::default(); g.len() / n_out * n_in];
    gx.par_chunks_mut(n_in * inner).zip(g.par_chunks(n_out * inner)).for_each(|(out, gs)| {
        for (row, &(lo, hi, a, b)) in gs.chunks(inner).zip(&taps) {
            for (v, &r) in out[lo * inner..(lo + 1) * inner].iter_mut().zip(row) {
                *v = *v + a * r;
            }
            for (v, &r) in out[hi * inner..(hi + 1) * inner].iter_mut().zip(row) {
                *v = *v + b * r;
            }
        }
    });
    gx
}

/// Trilinear resize of contiguous `[N, C, from]` to `[N, C, to]`.
struct Resize {
    from: [usize; 3],
    to: [usize; 3],
}

impl Resize {
    /// W, then H, then D.
    fn forward<T: Real>(&self, x: &[T]) -> Vec<T> {
        let ([d, h, w], [d2, h2, w2]) = (self.from, self.to);
        let x = pass(x, w, 1, w2);
        let x = pass(&x, h, w2, h2);
        pass(&x, d, h2 * w2, d2)
    }

    /// The adjoint: D, then H, then W.
    fn backward<T: Real>(&self, g: &[T]) -> Vec<T> {
        let ([d, h, w], [d2, h2, w2]) = (self.from, self.to);
        let g = pass_adjoint(g, d, h2 * w2, d2);
        let g = pass_adjoint(&g, h, w2, h2);
        pass_adjoint(&g, w, 1, w2)
    }
}

/// `(N, C, start, end)` of a contiguous `[N, C, spatial]` operand.
fn operand(l: &Layout, spatial: [usize; 3], what: &str) -> Result<(usize, usize, usize, usize)> {
    let &[n, c, d, h, w] = l.dims() else {
        bail!("resize_trilinear: {what} must be [N, C, D, H, W], got {:?}", l.dims())
    };
    if [d, h, w] != spatial {
        bail!("resize_trilinear: {what} is {:?}, expected spatial size {spatial:?}", l.dims())
    }
    let Some((a, b)) = l.contiguous_offsets() else { bail!("resize_trilinear: {what} must be contiguous") };
    Ok((n, c, a, b))
}

impl CustomOp1 for Resize {
    fn name(&self) -> &'static str {
        "resize_trilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, a, b) = operand(l, self.from, "input")?;
        let storage = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.forward(&v[a..b])),
            CpuStorage::F64(v) => CpuStorage::F64(self.forward(&v[a..b])),
            other => bail!("resize_trilinear: unsupported dtype {:?}", other.dtype()),
        };
        let [d, h, w] = self.to;
        Ok((storage, Shape::from_dims(&[n, c, d, h, w])))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = ResizeAdjoint(Resize { from: self.from, to: self.to });
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// The gradient of [`Resize`]: `[N, C, to]` → `[N, C, from]`.
struct ResizeAdjoint(Resize);

impl CustomOp1 for ResizeAdjoint {
    fn name(&self) -> &'static str {
        "resize_trilinear-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, a, b) = operand(l, self.0.to, "gradient")?;
        let storage = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.0.backward(&v[a..b])),
            CpuStorage::F64(v) => CpuStorage::F64(self.0.backward(&v[a..b])),
            other => bail!("resize_trilinear-grad: unsupported dtype {:?}", other.dtype()),
        };
        let [d, h, w] = self.0.from;
        Ok((storage, Shape::from_dims(&[n, c, d, h, w])))
    }
}
