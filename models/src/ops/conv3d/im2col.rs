//! The tiled im2col + gemm kernels, for every stride, padding and dilation: the forward, the weight
//! gradient and the input gradient (as a convolution with flipped weights where it can be, col2im
//! otherwise). The direct kernels take over the shapes they cover.

use rayon::prelude::*;

use super::geometry::{Dims, Phases, Trim};
use super::{direct, Elem};
use crate::ops::params::Conv3dParams;

/// A run of consecutive output positions within one output row `(z, y)`: x in `[x0, x1)`, stored at
/// column `j0` of the tile.
#[derive(Clone, Copy)]
pub(super) struct Run {
    pub(super) z: usize,
    pub(super) y: usize,
    pub(super) x0: usize,
    pub(super) x1: usize,
    pub(super) j0: usize,
}

pub(super) fn runs(d: &Dims, p0: usize, p1: usize) -> Vec<Run> {
    let [_, oh, ow] = d.out;
    let mut out = Vec::new();
    let mut p = p0;
    while p < p1 {
        let (z, y, x0) = (p / (oh * ow), (p / ow) % oh, p % ow);
        let x1 = ow.min(x0 + (p1 - p));
        out.push(Run { z, y, x0, x1, j0: p - p0 });
        p += x1 - x0;
    }
    out
}

/// Walks the column matrix of a tile row by row (`r = (ci, kd, kh, kw)`) and run by run. For each run
/// calls `f(row, j, len, src)`: `len` columns from `j` map to input offsets `src + t * stride_w`, or
/// `src = None` where they fall into padding. Runs are split at the padding borders, so the callee
/// does plain copies or adds.
#[inline]
pub(super) fn for_each_span(d: &Dims, runs: &[Run], mut f: impl FnMut(usize, usize, usize, Option<usize>)) {
    let [kd, kh, kw] = d.kernel;
    let [id_, ih_, iw_] = d.input.map(|v| v as isize);
    let [sd, sh, sw] = d.p.stride.map(|v| v as isize);
    let [pd, ph, pw] = d.p.padding.map(|v| v as isize);
    let [dd, dh, dw] = d.p.dilation.map(|v| v as isize);
    let mut row = 0;
    for ci in 0..d.ci {
        let base = (ci * d.in_size()) as isize;
        for a in 0..kd as isize {
            for b in 0..kh as isize {
                for c in 0..kw as isize {
                    let off = c * dw - pw;
                    // x with 0 <= x * sw + off < W.
                    let xa = if off >= 0 { 0 } else { (-off + sw - 1) / sw };
                    let xb = if iw_ - off <= 0 { 0 } else { (iw_ - off + sw - 1) / sw };
                    for r in runs {
                        let iz = r.z as isize * sd - pd + a * dd;
                        let iy = r.y as isize * sh - ph + b * dh;
                        let (x0, x1) = (r.x0 as isize, r.x1 as isize);
                        if iz < 0 || iz >= id_ || iy < 0 || iy >= ih_ {
                            f(row, r.j0, r.x1 - r.x0, None);
                            continue;
                        }
                        let lo = xa.clamp(x0, x1);
                        let hi = xb.clamp(lo, x1);
                        if lo > x0 {
                            f(row, r.j0, (lo - x0) as usize, None);
                        }
                        if hi > lo {
                            let src = base + (iz * ih_ + iy) * iw_ + lo * sw + off;
                            f(row, r.j0 + (lo - x0) as usize, (hi - lo) as usize, Some(src as usize));
                        }
                        if x1 > hi {
                            f(row, r.j0 + (hi - x0) as usize, (x1 - hi) as usize, None);
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

pub(super) fn im2col<T: Elem>(d: &Dims, x: &[T], p0: usize, p1: usize, cols: &mut [T]) {
    let p = p1 - p0;
    let sw = d.p.stride[2];
    let runs = runs(d, p0, p1);
    for_each_span(d, &runs, |r, j, len, src| {
        let dst = &mut cols[r * p + j..r * p + j + len];
        match src {
            None => dst.fill(T::ZERO),
            Some(s) if sw == 1 => dst.copy_from_slice(&x[s..s + len]),
            Some(s) => dst.iter_mut().enumerate().for_each(|(t, v)| *v = x[s + t * sw]),
        }
    });
}

pub(super) fn col2im<T: Elem>(d: &Dims, cols: &[T], p0: usize, p1: usize, gx: &mut [T]) {
    let p = p1 - p0;
    let sw = d.p.stride[2];
    let runs = runs(d, p0, p1);
    for_each_span(d, &runs, |r, j, len, src| {
        if let Some(s) = src {
            let from = &cols[r * p + j..r * p + j + len];
            if sw == 1 {
                gx[s..s + len].iter_mut().zip(from).for_each(|(g, &v)| *g += v);
            } else {
                from.iter().enumerate().for_each(|(t, &v)| gx[s + t * sw] += v);
            }
        }
    });
}

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`, all strides given as (row, column).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const T,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    // SAFETY: the caller guarantees that the pointers cover the strided ranges.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A raw pointer that may cross threads: each task writes a disjoint region.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, closures capture the whole (Send) wrapper rather than its raw field.
    pub(super) fn ptr(self) -> *mut T {
        self.0
    }
}

pub(super) fn forward<T: Elem>(d: &Dims, x: &[T], w: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return forward(&t.dims, x, &t.slice(d, w));
    }
    if let Some(ph) = Phases::of(d).filter(|ph| T::DIRECT && direct::applies(&ph.dims)) {
        return forward(&ph.dims, &ph.gather(d, x), &ph.weight(d, w));
    }
    if let Some(y) = T::direct_forward(d, x, w) {
        return y;
    }
    let (k, out_size, in_size) = (d.k(), d.out_size(), d.in_size());
    let mut y = vec![T::ZERO; d.n * d.co * out_size];
    let yp = SendPtr(y.as_mut_ptr());
    let jobs: Vec<(usize, usize, usize)> =
        (0..d.n).flat_map(|n| d.tiles().into_iter().map(move |(p0, p1)| (n, p0, p1))).collect();
    jobs.par_iter().for_each(|&(n, p0, p1)| {
        let p = p1 - p0;
        let xs = &x[n * d.ci * in_size..(n + 1) * d.ci * in_size];
        // SAFETY: tile (n, p0..p1) owns columns p0..p1 of every output channel of sample n.
        unsafe {
            let dst = yp.ptr().add(n * d.co * out_size + p0);
            if d.is_pointwise() {
                gemm(d.co, p, k, dst, out_size, 1, false, w.as_ptr(), k, 1, xs.as_ptr().add(p0), in_size, 1);
            } else {
                T::with_scratch(k * p, |cols| {
                    im2col(d, xs, p0, p1, cols);
                    gemm(d.co, p, k, dst, out_size, 1, false, w.as_ptr(), k, 1, cols.as_ptr(), p, 1);
                });
            }
        }
    });
    y
}

/// Chunks whose partial sums are added in a fixed order: results do not depend on the thread count
/// or on work stealing, so training is reproducible bit for bit.
pub(super) const REDUCTION_CHUNKS: usize = 16;

/// Runs `f(acc, job)` over `jobs` in [`REDUCTION_CHUNKS`] parallel chunks, each with its own zeroed
/// accumulator of `len`, and returns the sum of the accumulators in chunk order.
pub(super) fn sum_ordered<T: Elem, J: Sync>(jobs: &[J], len: usize, f: impl Fn(&mut [T], &J) + Sync) -> Vec<T> {
    let chunk = jobs.len().div_ceil(REDUCTION_CHUNKS).max(1);
    let partials: Vec<Vec<T>> = jobs
        .par_chunks(chunk)
        .map(|part| {
            let mut acc = vec![T::ZERO; len];
            for j in part {
                f(&mut acc, j);
            }
            acc
        })
        .collect();
    let mut out = vec![T::ZERO; len];
    for p in partials {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
    out
}

pub(super) fn weight_grad<T: Elem>(d: &Dims, x: &[T], gy: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return t.expand(d, &weight_grad(&t.dims, x, gy));
    }
    if let Some(ph) = Phases::of(d).filter(|ph| T::DIRECT && direct::applies(&ph.dims)) {
        let xs = ph.gather(d, x);
        // The phase kernel's padding taps are dropped by `weight_back`: not computed (the stem's
        // weight gradient: 9.5 ms instead of 10.9, `examples/wgrad`, minimum of 15).
        let gw = T::direct_weight_grad(&ph.dims, &xs, gy, Some(&ph.live_taps(d)))
            .unwrap_or_else(|| weight_grad(&ph.dims, &xs, gy));
        return ph.weight_back(d, &gw);
    }
    if let Some(gw) = T::direct_weight_grad(d, x, gy, None) {
        return gw;
    }
    let (k, out_size, in_size) = (d.k(), d.out_size(), d.in_size());
    let jobs: Vec<(usize, usize, usize)> =
        (0..d.n).flat_map(|n| d.tiles().into_iter().map(move |(p0, p1)| (n, p0, p1))).collect();
    // Accumulate gwᵀ [K, Co] = cols [K, P] · gyᵀ [P, Co]: the long K side as gemm rows runs much
    // faster than the [Co, K] orientation when Co is small.
    let gwt = sum_ordered(&jobs, k * d.co, |acc, &(n, p0, p1)| {
        let p = p1 - p0;
        let xs = &x[n * d.ci * in_size..(n + 1) * d.ci * in_size];
        let g = &gy[n * d.co * out_size..];
        // SAFETY: acc is this chunk's [K, Co] accumulator; reads stay within x, gy and cols.
        let mut accumulate = |lhs: *const T, lhs_rs: usize| unsafe {
            gemm(k, d.co, p, acc.as_mut_ptr(), d.co, 1, true, lhs, lhs_rs, 1, g.as_ptr().add(p0), 1, out_size)
        };
        if d.is_pointwise() {
            accumulate(xs[p0..].as_ptr(), in_size);
        } else {
            T::with_scratch(k * p, |cols| {
                im2col(d, xs, p0, p1, cols);
                accumulate(cols.as_ptr(), p);
            });
        }
    });
    let mut gw = vec![T::ZERO; d.co * k];
    for r in 0..k {
        for co in 0..d.co {
            gw[co * k + r] = gwt[r * d.co + co];
        }
    }
    gw
}

/// For stride 1 the input gradient is itself a convolution: of the output gradient with the weight
/// flipped in space and transposed in channels, padded by `dilation·(k−1) − padding`. That runs through
/// the fast forward path (one gemm per tile with a long reduction) instead of a scatter.
pub(super) fn input_grad_as_conv<T: Elem>(d: &Dims, gy: &[T], w: &[T]) -> Option<Vec<T>> {
    if d.p.stride != [1; 3] {
        return None;
    }
    let mut padding = [0; 3];
    for (a, pad) in padding.iter_mut().enumerate() {
        *pad = (d.p.dilation[a] * (d.kernel[a] - 1)).checked_sub(d.p.padding[a])?;
    }
    let flipped = Dims {
        n: d.n,
        ci: d.co,
        co: d.ci,
        input: d.out,
        kernel: d.kernel,
        out: d.input,
        p: Conv3dParams { stride: [1; 3], padding, dilation: d.p.dilation },
    };
    if let Some(gx) = T::direct_input_grad(&flipped, gy, w) {
        return Some(gx);
    }
    let [kd, kh, kw] = d.kernel;
    let kvol = kd * kh * kw;
    // Written in order, one input channel per task: writing in the weight's order (runs of 27
    // floats 55 KB apart for 128 channels) took 0.5 ms of the 1.8 ms input gradient on 3×3 planes.
    let mut wt = vec![T::ZERO; w.len()];
    wt.par_chunks_mut(d.co * kvol).enumerate().for_each(|(ci, dst)| {
        for (co, row) in dst.chunks_mut(kvol).enumerate() {
            let src = &w[(co * d.ci + ci) * kvol..][..kvol];
            for (v, &s) in row.iter_mut().rev().zip(src) {
                *v = s;
            }
        }
    });
    Some(forward(&flipped, gy, &wt))
}

pub(super) fn input_grad<T: Elem>(d: &Dims, gy: &[T], w: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return input_grad(&t.dims, gy, &t.slice(d, w));
    }
    if let Some(ph) = Phases::of(d).filter(|ph| T::DIRECT && direct::applies(&ph.dims)) {
        return ph.scatter(d, &input_grad(&ph.dims, gy, &ph.weight(d, w)));
    }
    if let Some(gx) = input_grad_as_conv(d, gy, w) {
        return gx;
    }
    let (k, out_size, in_size) = (d.k(), d.out_size(), d.in_size());
    let sample = d.ci * in_size;
    let mut gx = vec![T::ZERO; d.n * sample];
    for (n, gxs) in gx.chunks_mut(sample).enumerate() {
        let g = &gy[n * d.co * out_size..(n + 1) * d.co * out_size];
        if d.is_pointwise() {
            // gx[ci, p] = Σ_co w[co, ci] g[co, p]: one gemm, no scatter.
            unsafe {
                gemm(
                    d.ci,
                    in_size,
                    d.co,
                    gxs.as_mut_ptr(),
                    in_size,
                    1,
                    false,
                    w.as_ptr(),
                    1,
                    k,
                    g.as_ptr(),
                    out_size,
                    1,
                )
            };
            continue;
        }
        // Taps of neighbouring tiles overlap in the input, so each thread scatters into its own buffer.
        let summed = sum_ordered(&d.tiles(), sample, |acc, &(p0, p1)| {
            let p = p1 - p0;
            T::with_scratch(k * p, |cols| {
                // SAFETY: cols holds K × p; lhs = wᵀ (element (r, co) at co * k + r).
                unsafe {
                    gemm(k, p, d.co, cols.as_mut_ptr(), p, 1, false, w.as_ptr(), 1, k, g.as_ptr().add(p0), out_size, 1)
                };
                col2im(d, cols, p0, p1, acc);
            });
        });
        gxs.copy_from_slice(&summed);
    }
    gx
}
