//! 3D max pooling (custom op with backward) and global average pooling.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use crate::ops::params::MaxPool3dParams;

/// The input indices `[lo, hi)` that output `o`'s window covers along one axis, padding cut off.
fn window(o: usize, kernel: usize, stride: usize, padding: usize, len: usize) -> (usize, usize) {
    let start = o * stride;
    (start.saturating_sub(padding), (start + kernel).saturating_sub(padding).min(len))
}

/// For every output voxel of every (n, c) plane: the flat input index of the window maximum (first
/// maximum in scan order on ties, as PyTorch). Window bounds are clipped once per axis rather than
/// tested per tap: the stem's pool ran 5× faster so.
fn argmax<T: Copy + PartialOrd + Send + Sync>(
    x: &[T],
    planes: usize,
    input: [usize; 3],
    out: [usize; 3],
    p: &MaxPool3dParams,
) -> Vec<usize> {
    let (isz, osz) = (input.iter().product::<usize>(), out.iter().product::<usize>());
    let axis = |a: usize| -> Vec<(usize, usize)> {
        (0..out[a]).map(|o| window(o, p.kernel[a], p.stride[a], p.padding[a], input[a])).collect()
    };
    let (wz, wy, wx) = (axis(0), axis(1), axis(2));
    let mut idx = vec![0usize; planes * osz];
    idx.par_chunks_mut(osz).enumerate().for_each(|(plane, dst)| {
        let base = plane * isz;
        let xs = &x[base..base + isz];
        let mut o = 0;
        for &(z0, z1) in &wz {
            for &(y0, y1) in &wy {
                for &(x0, x1) in &wx {
                    // `out_dims` guarantees every window holds at least one input voxel.
                    let mut best_i = (z0 * input[1] + y0) * input[2] + x0;
                    let mut best = xs[best_i];
                    for iz in z0..z1 {
                        for iy in y0..y1 {
                            let row = (iz * input[1] + iy) * input[2];
                            for (i, &v) in xs[row + x0..row + x1].iter().enumerate() {
                                if v > best {
                                    (best, best_i) = (v, row + x0 + i);
                                }
                            }
                        }
                    }
                    dst[o] = base + best_i;
                    o += 1;
                }
            }
        }
    });
    idx
}

/// The forward keeps each window's argmax for the backward: recomputing it, then scattering on one
/// thread into a zeroed copy of the input, had made the stem pool's backward 3–5 ms of a 75 ms
/// backward pass.
struct MaxPool3d {
    params: MaxPool3dParams,
    argmax: Arc<Mutex<Option<Vec<usize>>>>,
}
struct MaxPool3dGrad {
    params: MaxPool3dParams,
    argmax: Arc<Mutex<Option<Vec<usize>>>>,
}

fn dims(l: &Layout) -> Result<([usize; 5], usize, usize)> {
    let &[n, c, d, h, w] = l.dims() else { bail!("max_pool3d: expected [N, C, D, H, W], got {:?}", l.dims()) };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("max_pool3d: input must be contiguous") };
    Ok(([n, c, d, h, w], a, b))
}

impl CustomOp1 for MaxPool3d {
    fn name(&self) -> &'static str {
        "max_pool3d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ([n, c, d, h, w], a, b) = dims(l)?;
        let out = self.params.out_dims([d, h, w])?;
        let (storage, idx) = match s {
            CpuStorage::F32(v) => {
                let x = &v[a..b];
                let idx = argmax(x, n * c, [d, h, w], out, &self.params);
                (CpuStorage::F32(idx.iter().map(|&i| x[i]).collect()), idx)
            }
            CpuStorage::F64(v) => {
                let x = &v[a..b];
                let idx = argmax(x, n * c, [d, h, w], out, &self.params);
                (CpuStorage::F64(idx.iter().map(|&i| x[i]).collect()), idx)
            }
            other => bail!("max_pool3d: unsupported dtype {:?}", other.dtype()),
        };
        *self.argmax.lock().expect("max_pool3d lock") = Some(idx);
        Ok((storage, Shape::from_dims(&[n, c, out[0], out[1], out[2]])))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = MaxPool3dGrad { params: self.params, argmax: self.argmax.clone() };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

impl CustomOp2 for MaxPool3dGrad {
    fn name(&self) -> &'static str {
        "max_pool3d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ([n, c, d, h, w], a, b) = dims(l1)?;
        let out = self.params.out_dims([d, h, w])?;
        let Some((ga, gb)) = l2.contiguous_offsets() else { bail!("max_pool3d-grad: grad must be contiguous") };
        let (isz, osz) = (d * h * w, out.iter().product::<usize>());
        let saved = self.argmax.lock().expect("max_pool3d lock").take();
        // Each plane's maxima lie in its own input plane: planes scatter in parallel, each in its
        // window order (the sums where windows overlap are the serial loop's).
        macro_rules! scatter {
            ($x:expr, $g:expr, $variant:ident) => {{
                let idx = saved.unwrap_or_else(|| argmax(&$x[a..b], n * c, [d, h, w], out, &self.params));
                let mut gx = vec![Default::default(); b - a];
                gx.par_chunks_mut(isz).zip(idx.par_chunks(osz)).zip($g[ga..gb].par_chunks(osz)).enumerate().for_each(
                    |(plane, ((gx, idx), g))| {
                        for (&i, g) in idx.iter().zip(g) {
                            gx[i - plane * isz] += *g;
                        }
                    },
                );
                CpuStorage::$variant(gx)
            }};
        }
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => scatter!(x, g, F32),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => scatter!(x, g, F64),
            (x, _) => bail!("max_pool3d-grad: unsupported dtype {:?}", x.dtype()),
        };
        Ok((storage, Shape::from_dims(&[n, c, d, h, w])))
    }
}

/// Max pooling over `[N, C, D, H, W]`, differentiable (gradient to the first maximum of each window).
/// On devices other than the CPU: the composed [`crate::ops::generic::max_pool3d_taps`].
pub fn max_pool3d(x: &Tensor, params: MaxPool3dParams) -> Result<Tensor> {
    if !crate::ops::cpu_kernels(x) {
        return crate::ops::generic::max_pool3d_taps(x, params);
    }
    x.contiguous()?.apply_op1(MaxPool3d { params, argmax: Arc::new(Mutex::new(None)) })
}

/// Mean over D, H, W, keeping them as size-1 axes: `[N, C, 1, 1, 1]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = x.dims5()?;
    x.reshape((n, c, d * h * w))?.mean_keepdim(2)?.reshape((n, c, 1, 1, 1))
}
