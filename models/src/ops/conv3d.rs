//! 3D convolution for Candle (which has none): tiled im2col + gemm, with its own backward pass.
//!
//! Forward: for each tile of ~512 output positions of one sample, gather the receptive fields into a
//! column matrix `[Ci·kd·kh·kw, P]` and multiply by the weight `[Co, Ci·kd·kh·kw]` straight into the
//! output. Tiles are independent, so they run in parallel and the column buffer stays in cache.
//! Backward: the weight gradient is `grad_out · colsᵀ` summed over tiles (per-thread accumulators);
//! the input gradient is `Wᵀ · grad_out` scattered back through the same index map (col2im), which is
//! correct for every stride, padding and dilation.
//!
//! On x86-64 with AVX2 + FMA, f32 convolutions of stride 1 (strided ones through the phase rewrite,
//! [`Phases`]) run in direct kernels instead, without a column matrix: [`channel_tiles`] (vectors along
//! the output channels) where those are a multiple of 64, else [`direct`] (vectors along a padded row)
//! where the rows are long enough.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

mod channel_tiles;
mod direct;

use super::params::Conv3dParams;

/// Output positions per tile: the column buffer (`K × TILE`) stays within L2 for typical K.
const TILE: usize = 512;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    ci: usize,
    co: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    out: [usize; 3],
    p: Conv3dParams,
}

impl Dims {
    fn k(&self) -> usize {
        self.ci * self.kernel.iter().product::<usize>()
    }
    fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    fn out_size(&self) -> usize {
        self.out.iter().product()
    }
    /// A 1×1×1 kernel at stride 1 without padding: the input already is the column matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.p.stride == [1; 3] && self.p.padding == [0; 3]
    }
    fn tiles(&self) -> Vec<(usize, usize)> {
        let total = self.out_size();
        (0..total.div_ceil(TILE)).map(|t| (t * TILE, ((t + 1) * TILE).min(total))).collect()
    }
}

/// The kernel cut down to the taps that read the input for at least one output position.
///
/// Why: ASPP's dilations (6, 12, 18) exceed the small maps it runs on (8×3×3 at the demo size), so
/// most of its 27 taps read only padding; computing them cost as much as the stage they follow. A
/// tap range `[lo, hi)` per axis with the padding reduced by `lo·dilation` gives the same outputs
/// (the right side stays implicit: the kernels bound-check against the input size).
struct Trim {
    dims: Dims,
    taps: [std::ops::Range<usize>; 3],
}

impl Trim {
    /// `None` when every tap is live (or trimming would need negative padding).
    fn of(d: &Dims) -> Option<Trim> {
        let mut taps = [0..0, 0..0, 0..0];
        let mut padding = d.p.padding;
        for a in 0..3 {
            let (s, p, dil, len) = (d.p.stride[a], d.p.padding[a], d.p.dilation[a], d.input[a]);
            let live = |t: usize| (0..d.out[a]).any(|o| (o * s + t * dil).checked_sub(p).is_some_and(|i| i < len));
            let lo = (0..d.kernel[a]).find(|&t| live(t))?;
            let hi = (0..d.kernel[a]).rev().find(|&t| live(t))? + 1;
            padding[a] = p.checked_sub(lo * dil)?;
            taps[a] = lo..hi;
        }
        if taps.iter().zip(d.kernel).all(|(r, k)| r.len() == k) {
            return None;
        }
        let kernel = taps.clone().map(|r| r.len());
        Some(Trim { dims: Dims { kernel, p: Conv3dParams { padding, ..d.p }, ..*d }, taps })
    }

    /// The live taps of a full weight `[Co, Ci, kd, kh, kw]`.
    fn slice<T: Copy>(&self, full: &Dims, w: &[T]) -> Vec<T> {
        let mut out = Vec::with_capacity(self.dims.co * self.dims.k());
        for pair in 0..full.co * full.ci {
            for a in self.taps[0].clone() {
                for b in self.taps[1].clone() {
                    let row = ((pair * full.kernel[0] + a) * full.kernel[1] + b) * full.kernel[2];
                    out.extend_from_slice(&w[row + self.taps[2].start..row + self.taps[2].end]);
                }
            }
        }
        out
    }

    /// A gradient of the live taps spread back over the full kernel, zero at the dead taps.
    fn expand<T: Elem>(&self, full: &Dims, g: &[T]) -> Vec<T> {
        let mut out = vec![T::ZERO; full.co * full.k()];
        let mut src = g.chunks_exact(self.taps[2].len());
        for pair in 0..full.co * full.ci {
            for a in self.taps[0].clone() {
                for b in self.taps[1].clone() {
                    let row = ((pair * full.kernel[0] + a) * full.kernel[1] + b) * full.kernel[2];
                    if let Some(s) = src.next() {
                        out[row + self.taps[2].start..row + self.taps[2].end].copy_from_slice(s);
                    }
                }
            }
        }
        out
    }
}

/// A strided convolution rewritten as a stride-1 one over the input's phases (space to depth).
///
/// Why: the direct kernel needs stride 1, and the stem (7×7×7, stride 2, one input channel) was the
/// costliest convolution of a step through im2col, whose strided gathers copy element by element.
/// Along an axis with stride `s`, tap `a = s·a' + r` of output `o` reads padded input `s·(o + a') + r`:
/// phase `r` of the padded input (every `s`-th voxel from `r`) convolved at stride 1 with taps
/// `a'`. The phases become input channels (`Ci·Π s`), the kernel `⌈k/s⌉` per axis with zeros where
/// `s·a' + r ≥ k`; padding is folded into the phases, so the stride-1 convolution has none. It
/// multiplies more zeros (the stem: 512 taps for 343) and still runs faster.
struct Phases {
    dims: Dims,
}

impl Phases {
    /// `Some` for a strided, undilated convolution whose stride-1 form the direct kernel takes.
    fn of(d: &Dims) -> Option<Phases> {
        let p = d.p;
        if p.stride == [1; 3] || p.dilation != [1; 3] || (0..3).any(|a| d.kernel[a] < p.stride[a]) {
            return None;
        }
        let kernel: [usize; 3] = std::array::from_fn(|a| d.kernel[a].div_ceil(p.stride[a]));
        let input: [usize; 3] = std::array::from_fn(|a| d.out[a] + kernel[a] - 1);
        let phases: usize = p.stride.iter().product();
        let dims = Dims { ci: d.ci * phases, input, kernel, p: Conv3dParams::default(), ..*d };
        direct::applies(&dims).then_some(Phases { dims })
    }

    /// For every phase-input index along axis `a`: the source index in the original input, or
    /// `None` for padding; phase `r`, position `u` reads padded `s·u + r`.
    fn sources(&self, d: &Dims, a: usize) -> Vec<Vec<Option<usize>>> {
        let (s, p, len) = (d.p.stride[a], d.p.padding[a], d.input[a]);
        (0..s)
            .map(|r| (0..self.dims.input[a]).map(|u| (s * u + r).checked_sub(p).filter(|&i| i < len)).collect())
            .collect()
    }

    /// Calls `f(phase channel offset, source offset)` for every phase-input voxel that maps to an
    /// input voxel of sample-channel plane `(n, ci)`, offsets within one `[D, H, W]` plane each.
    fn for_each_voxel(&self, d: &Dims, mut f: impl FnMut(usize, usize, usize)) {
        let [sz, sy, sx] = [0, 1, 2].map(|a| self.sources(d, a));
        let [_, ih, iw] = d.input;
        let [_, ph, pw] = self.dims.input;
        let mut phase = 0;
        for z_src in &sz {
            for y_src in &sy {
                for x_src in &sx {
                    for (u, zs) in z_src.iter().enumerate() {
                        let Some(zs) = zs else { continue };
                        for (v, ys) in y_src.iter().enumerate() {
                            let Some(ys) = ys else { continue };
                            for (w, xs) in x_src.iter().enumerate() {
                                if let Some(xs) = xs {
                                    f(phase, (u * ph + v) * pw + w, (zs * ih + ys) * iw + xs);
                                }
                            }
                        }
                    }
                    phase += 1;
                }
            }
        }
    }

    /// `[N, Ci, D, H, W]` → `[N, Ci·phases, D', H', W']`, zeros where the phase reads padding.
    fn gather<T: Elem>(&self, d: &Dims, x: &[T]) -> Vec<T> {
        let (plane, phase_plane) = (d.in_size(), self.dims.in_size());
        let phases = self.dims.ci / d.ci;
        let mut out = vec![T::ZERO; d.n * self.dims.ci * phase_plane];
        out.par_chunks_mut(phases * phase_plane).enumerate().for_each(|(nc, dst)| {
            let src = &x[nc * plane..(nc + 1) * plane];
            self.for_each_voxel(d, |r, to, from| dst[r * phase_plane + to] = src[from]);
        });
        out
    }

    /// The inverse of [`Phases::gather`] for gradients: every input voxel has exactly one phase voxel.
    fn scatter<T: Elem>(&self, d: &Dims, g: &[T]) -> Vec<T> {
        let (plane, phase_plane) = (d.in_size(), self.dims.in_size());
        let phases = self.dims.ci / d.ci;
        let mut out = vec![T::ZERO; d.n * d.ci * plane];
        out.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
            let src = &g[nc * phases * phase_plane..(nc + 1) * phases * phase_plane];
            self.for_each_voxel(d, |r, to, from| dst[from] = src[r * phase_plane + to]);
        });
        out
    }

    /// Tap `(a', b', c')` of phase `(rz, ry, rx)` is original tap `(s·a' + rz, …)`, if inside the kernel.
    fn for_each_tap(&self, d: &Dims, mut f: impl FnMut(usize, usize)) {
        let [kd, kh, kw] = self.dims.kernel;
        let [sd, sh, sw] = d.p.stride;
        let mut phase = 0;
        for rz in 0..sd {
            for ry in 0..sh {
                for rx in 0..sw {
                    for a in 0..kd {
                        for b in 0..kh {
                            for c in 0..kw {
                                let (oa, ob, oc) = (sd * a + rz, sh * b + ry, sw * c + rx);
                                if oa < d.kernel[0] && ob < d.kernel[1] && oc < d.kernel[2] {
                                    let to = ((phase * kd + a) * kh + b) * kw + c;
                                    let from = (oa * d.kernel[1] + ob) * d.kernel[2] + oc;
                                    f(to, from);
                                }
                            }
                        }
                    }
                    phase += 1;
                }
            }
        }
    }

    /// The phase kernel `[Co, Ci·phases, k']` of a weight `[Co, Ci, k]`.
    fn weight<T: Elem>(&self, d: &Dims, w: &[T]) -> Vec<T> {
        let (k, kp) = (d.k() / d.ci, self.dims.k() / d.ci);
        let mut out = vec![T::ZERO; d.co * self.dims.k()];
        for (pair, dst) in out.chunks_mut(kp).enumerate() {
            let src = &w[pair * k..(pair + 1) * k];
            self.for_each_tap(d, |to, from| dst[to] = src[from]);
        }
        out
    }

    /// Per (phase channel, phase tap) of the phase kernel, whether it is an original tap (else it is
    /// one of the zeros that pad the kernel to `⌈k/s⌉` per axis).
    fn live_taps(&self, d: &Dims) -> Vec<bool> {
        let mut live = vec![false; self.dims.k() / d.ci];
        self.for_each_tap(d, |to, _| live[to] = true);
        live.repeat(d.ci)
    }

    /// A phase-kernel gradient back on the original taps.
    fn weight_back<T: Elem>(&self, d: &Dims, g: &[T]) -> Vec<T> {
        let (k, kp) = (d.k() / d.ci, self.dims.k() / d.ci);
        let mut out = vec![T::ZERO; d.co * d.k()];
        for (pair, dst) in out.chunks_mut(k).enumerate() {
            let src = &g[pair * kp..(pair + 1) * kp];
            self.for_each_tap(d, |to, from| dst[from] = src[to]);
        }
        out
    }
}

/// Element types the kernels run on (f32 for training, f64 for gradient checks).
trait Elem: Copy + Send + Sync + 'static + std::ops::AddAssign + Default {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Runs `f` on this thread's column buffer of at least `len` elements. Every kernel overwrites
    /// the part it reads, so the buffer is neither zeroed nor freed between tiles or calls: with a fresh
    /// zeroed buffer per rayon split, `memset` took 11 % of an im2col convolution's profile (4 % after,
    /// the padding fills); the wall-time gain was within the 2-core machine's noise.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// A faster forward kernel for this type and these sizes, if there is one.
    /// Whether this type has the direct kernels (which the phase rewrite exists for).
    const DIRECT: bool = false;
    fn direct_forward(_d: &Dims, _x: &[Self], _w: &[Self]) -> Option<Vec<Self>> {
        None
    }
    /// A faster weight-gradient kernel for this type and these sizes, if there is one.
    /// `needed`: per (input channel, tap), whether its gradient is used; unused ones may come back 0.
    fn direct_weight_grad(_d: &Dims, _x: &[Self], _gy: &[Self], _needed: Option<&[bool]>) -> Option<Vec<Self>> {
        None
    }
    /// A faster kernel for the input gradient as the forward of `flipped` (see `input_grad_as_conv`),
    /// taking the original weight `w`, if there is one.
    fn direct_input_grad(_flipped: &Dims, _gy: &[Self], _w: &[Self]) -> Option<Vec<Self>> {
        None
    }
}

macro_rules! elem {
    ($t:ty $(, $direct:item)*) => {
        impl Elem for $t {
            $($direct)*
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                SCRATCH.with(|cell| {
                    // A kernel never calls another on the same thread while it holds the buffer; if
                    // one ever did, it gets a buffer of its own instead of a panic.
                    match cell.try_borrow_mut() {
                        Ok(mut buf) => {
                            if buf.len() < len {
                                buf.resize(len, 0.0);
                            }
                            f(&mut buf[..len])
                        }
                        Err(_) => f(&mut vec![0.0; len]),
                    }
                })
            }
        }
    };
}
elem!(
    f32,
    const DIRECT: bool = true;,
    fn direct_forward(d: &Dims, x: &[f32], w: &[f32]) -> Option<Vec<f32>> {
        if channel_tiles::applies(d) {
            return Some(channel_tiles::forward(d, x, w));
        }
        direct::applies(d).then(|| direct::forward(d, x, w))
    },
    fn direct_weight_grad(d: &Dims, x: &[f32], gy: &[f32], needed: Option<&[bool]>) -> Option<Vec<f32>> {
        if channel_tiles::applies(d) {
            return Some(channel_tiles::weight_grad(d, x, gy));
        }
        direct::applies_weight_grad(d).then(|| direct::weight_grad(d, x, gy, needed))
    },
    fn direct_input_grad(flipped: &Dims, gy: &[f32], w: &[f32]) -> Option<Vec<f32>> {
        channel_tiles::applies(flipped).then(|| channel_tiles::input_grad(flipped, gy, w))
    }
);
elem!(f64);

/// A run of consecutive output positions within one output row `(z, y)`: x in `[x0, x1)`, stored at
/// column `j0` of the tile.
#[derive(Clone, Copy)]
struct Run {
    z: usize,
    y: usize,
    x0: usize,
    x1: usize,
    j0: usize,
}

fn runs(d: &Dims, p0: usize, p1: usize) -> Vec<Run> {
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
fn for_each_span(d: &Dims, runs: &[Run], mut f: impl FnMut(usize, usize, usize, Option<usize>)) {
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

fn im2col<T: Elem>(d: &Dims, x: &[T], p0: usize, p1: usize, cols: &mut [T]) {
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

fn col2im<T: Elem>(d: &Dims, cols: &[T], p0: usize, p1: usize, gx: &mut [T]) {
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
struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, closures capture the whole (Send) wrapper rather than its raw field.
    fn ptr(self) -> *mut T {
        self.0
    }
}

fn forward<T: Elem>(d: &Dims, x: &[T], w: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return forward(&t.dims, x, &t.slice(d, w));
    }
    if let Some(ph) = Phases::of(d).filter(|_| T::DIRECT) {
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
const REDUCTION_CHUNKS: usize = 16;

/// Runs `f(acc, job)` over `jobs` in [`REDUCTION_CHUNKS`] parallel chunks, each with its own zeroed
/// accumulator of `len`, and returns the sum of the accumulators in chunk order.
fn sum_ordered<T: Elem, J: Sync>(jobs: &[J], len: usize, f: impl Fn(&mut [T], &J) + Sync) -> Vec<T> {
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

fn weight_grad<T: Elem>(d: &Dims, x: &[T], gy: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return t.expand(d, &weight_grad(&t.dims, x, gy));
    }
    if let Some(ph) = Phases::of(d).filter(|_| T::DIRECT) {
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
fn input_grad_as_conv<T: Elem>(d: &Dims, gy: &[T], w: &[T]) -> Option<Vec<T>> {
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

fn input_grad<T: Elem>(d: &Dims, gy: &[T], w: &[T]) -> Vec<T> {
    if let Some(t) = Trim::of(d) {
        return input_grad(&t.dims, gy, &t.slice(d, w));
    }
    if let Some(ph) = Phases::of(d).filter(|_| T::DIRECT) {
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

fn dims5(l: &Layout, what: &str) -> Result<[usize; 5]> {
    match l.dims() {
        &[a, b, c, d, e] => Ok([a, b, c, d, e]),
        other => bail!("conv3d: {what} must be 5D [N, C, D, H, W], got {other:?}"),
    }
}

/// Forward op: (input `[N, Ci, D, H, W]`, weight `[Co, Ci, kd, kh, kw]`) → `[N, Co, D', H', W']`.
struct Conv3d(Conv3dParams);
/// Weight gradient: (input, grad_out) → `[Co, Ci, kd, kh, kw]`.
struct Conv3dWeightGrad(Conv3dParams, [usize; 3]);
/// Input gradient: (grad_out, weight) → `[N, Ci, D, H, W]`.
struct Conv3dInputGrad(Conv3dParams, [usize; 3]);

macro_rules! dispatch {
    ($name:expr, $s1:expr, $l1:expr, $s2:expr, $l2:expr, |$a:ident, $b:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => {
                let $a = super::contiguous(x, $l1, "conv3d", "first operand")?;
                let $b = super::contiguous(y, $l2, "conv3d", "second operand")?;
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(x), CpuStorage::F64(y)) => {
                let $a = super::contiguous(x, $l1, "conv3d", "first operand")?;
                let $b = super::contiguous(y, $l2, "conv3d", "second operand")?;
                CpuStorage::F64($body)
            }
            (a, b) => bail!("{}: unsupported dtypes {:?} and {:?} (f32 or f64)", $name, a.dtype(), b.dtype()),
        }
    };
}

impl CustomOp2 for Conv3d {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [n, ci, id, ih, iw] = dims5(l1, "input")?;
        let [co, wci, kd, kh, kw] = dims5(l2, "weight")?;
        if ci != wci {
            bail!("conv3d: input has {ci} channels, weight expects {wci}")
        }
        let out = self.0.out_dims([id, ih, iw], [kd, kh, kw])?;
        let d = Dims { n, ci, co, input: [id, ih, iw], kernel: [kd, kh, kw], out, p: self.0 };
        let storage = dispatch!("conv3d", s1, l1, s2, l2, |x, w| forward(&d, x, w));
        Ok((storage, Shape::from_dims(&[n, co, out[0], out[1], out[2]])))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, id, ih, iw) = x.dims5()?;
        let (_, _, kd, kh, kw) = w.dims5()?;
        // Skip what nobody needs: the network input (stem) and frozen weights have no gradient path.
        let gx =
            if x.track_op() { Some(grad.apply_op2_no_bwd(w, &Conv3dInputGrad(self.0, [id, ih, iw]))?) } else { None };
        let gw =
            if w.track_op() { Some(x.apply_op2_no_bwd(&grad, &Conv3dWeightGrad(self.0, [kd, kh, kw]))?) } else { None };
        Ok((gx, gw))
    }
}

impl CustomOp2 for Conv3dWeightGrad {
    fn name(&self) -> &'static str {
        "conv3d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [n, ci, id, ih, iw] = dims5(l1, "input")?;
        let [_, co, od, oh, ow] = dims5(l2, "grad")?;
        let d = Dims { n, ci, co, input: [id, ih, iw], kernel: self.1, out: [od, oh, ow], p: self.0 };
        let storage = dispatch!(self.name(), s1, l1, s2, l2, |x, g| weight_grad(&d, x, g));
        let [kd, kh, kw] = self.1;
        Ok((storage, Shape::from_dims(&[co, ci, kd, kh, kw])))
    }
}

impl CustomOp2 for Conv3dInputGrad {
    fn name(&self) -> &'static str {
        "conv3d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [n, co, od, oh, ow] = dims5(l1, "grad")?;
        let [_, ci, kd, kh, kw] = dims5(l2, "weight")?;
        let d = Dims { n, ci, co, input: self.1, kernel: [kd, kh, kw], out: [od, oh, ow], p: self.0 };
        let storage = dispatch!(self.name(), s1, l1, s2, l2, |g, w| input_grad(&d, g, w));
        let [id, ih, iw] = self.1;
        Ok((storage, Shape::from_dims(&[n, ci, id, ih, iw])))
    }
}

/// 3D convolution without bias on the CPU kernels, differentiable in both arguments.
pub(super) fn conv3d_kernel(x: &Tensor, w: &Tensor, params: Conv3dParams) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Conv3d(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(input: [usize; 3], k: usize, pad: usize, dil: usize) -> Dims {
        let p = Conv3dParams { stride: [1; 3], padding: [pad; 3], dilation: [dil; 3] };
        Dims { n: 1, ci: 4, co: 4, input, kernel: [k; 3], out: p.out_dims(input, [k; 3]).expect("fits"), p }
    }

    #[test]
    fn aspp_on_a_small_map_keeps_only_the_taps_that_read_the_input() {
        // Demo size: ASPP at 8×3×3. Dilation 6: all three depth taps reach the input, only the
        // centre in H and W; dilations 12 and 18 exceed the depth as well: the centre tap alone.
        let t = Trim::of(&dims([8, 3, 3], 3, 6, 6)).expect("dead taps");
        assert_eq!((t.dims.kernel, t.dims.p.padding, t.taps.clone()), ([3, 1, 1], [6, 0, 0], [0..3, 1..2, 1..2]));
        for r in [12, 18] {
            let t = Trim::of(&dims([8, 3, 3], 3, r, r)).expect("dead taps");
            assert_eq!((t.dims.kernel, t.dims.p.padding), ([1; 3], [0; 3]));
        }
        // A block convolution reads the input with every tap.
        assert!(Trim::of(&dims([8, 3, 3], 3, 1, 1)).is_none());
    }

    #[test]
    fn strided_convolutions_become_stride_one_over_phases() {
        if crate::ops::skip_without("strided_convolutions_become_stride_one_over_phases", &["avx2", "fma"]) {
            return; // no direct kernel, no rewrite
        }
        assert!(direct::applies(&dims([8, 24, 24], 3, 1, 1)));
        // The demo's stem: 1 channel, 7×7×7, stride 2, on 32×96×96 → 8 phases, 4×4×4 taps.
        let p = Conv3dParams { stride: [2; 3], padding: [3; 3], dilation: [1; 3] };
        let stem = Dims { n: 2, ci: 1, co: 16, input: [32, 96, 96], kernel: [7; 3], out: [16, 48, 48], p };
        let ph = Phases::of(&stem).expect("the stem is rewritten");
        assert_eq!((ph.dims.ci, ph.dims.kernel, ph.dims.input), (8, [4; 3], [19, 51, 51]));
        // A stage transition, stride (1, 2, 2): 4 phases, 3×2×2 taps.
        let p = Conv3dParams { stride: [1, 2, 2], padding: [1; 3], dilation: [1; 3] };
        let down = Dims { n: 2, ci: 16, co: 32, input: [8, 24, 24], kernel: [3; 3], out: [8, 12, 12], p };
        let ph = Phases::of(&down).expect("rewritten");
        assert_eq!((ph.dims.ci, ph.dims.kernel, ph.dims.input), (64, [3, 2, 2], [10, 13, 13]));
        // 1×1×1 projections with stride 2 are left alone (3 of 4 phases would be all zeros).
        let p = Conv3dParams { stride: [1, 2, 2], padding: [0; 3], dilation: [1; 3] };
        let proj = Dims { n: 2, ci: 16, co: 32, input: [8, 24, 24], kernel: [1; 3], out: [8, 12, 12], p };
        assert!(Phases::of(&proj).is_none());
    }

    #[test]
    fn phase_weight_round_trips_and_gather_scatter_invert() {
        let p = Conv3dParams { stride: [2; 3], padding: [3; 3], dilation: [1; 3] };
        let d = Dims { n: 1, ci: 2, co: 3, input: [9, 30, 35], kernel: [7; 3], out: [5, 15, 18], p };
        let Some(ph) = Phases::of(&d) else { return };
        let w: Vec<f64> = (0..d.co * d.k()).map(|i| i as f64 + 1.0).collect();
        let wp = ph.weight(&d, &w);
        // Every original tap appears once; the rest of the phase kernel is zero.
        assert_eq!(wp.iter().filter(|&&v| v != 0.0).count(), w.len());
        assert_eq!(ph.weight_back(&d, &wp), w);
        let x: Vec<f64> = (0..d.n * d.ci * d.in_size()).map(|i| i as f64 + 1.0).collect();
        let g = ph.gather(&d, &x);
        assert_eq!(g.iter().filter(|&&v| v != 0.0).count(), x.len());
        assert_eq!(ph.scatter(&d, &g), x);
    }

    #[test]
    fn trimmed_weight_round_trips_through_slice_and_expand() {
        let d = dims([8, 3, 3], 3, 6, 6);
        let t = Trim::of(&d).expect("dead taps");
        let w: Vec<f64> = (0..d.co * d.k()).map(|i| i as f64).collect();
        let live = t.slice(&d, &w);
        assert_eq!(live.len(), d.co * d.ci * 3);
        let back = t.expand(&d, &live);
        for (i, (&b, &v)) in back.iter().zip(&w).enumerate() {
            let (a, bb, c) = ((i / 9) % 3, (i / 3) % 3, i % 3);
            assert_eq!(b, if bb == 1 && c == 1 { v } else { 0.0 }, "tap ({a}, {bb}, {c})");
        }
    }
}
