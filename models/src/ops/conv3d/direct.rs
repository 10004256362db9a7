//! Direct f32 convolution for stride 1 on x86-64 with AVX2 and FMA: no column matrix.
//!
//! Why: with the networks' small channel counts (16–128) a column matrix is re-read only `Co` times,
//! so building it (im2col, then the gemm's own packing) took as long as the multiplications — about
//! half of each convolution's time on a 2-core machine. Here the input is zero-padded once per sample
//! and every output plane is computed from it in place: for an output plane `z`, position `q = y·Wp + x`
//! on the padded row pitch `Wp`, tap `(a, b, c)` reads the padded input at `q + a·dd·Hp·Wp + b·dh·Wp +
//! c·dw`, a fixed shift. A register tile of 4 output channels × 16 positions (8 accumulators) then
//! takes 2 unaligned loads and 4 broadcasts per 8 FMAs (4 × 24 used all 16 registers, and LLVM
//! spilled an accumulator every iteration). Positions with `x ≥ W` (the padding columns
//! between rows) are computed and dropped, so the kernel is used only where they are few.
//! The input gradient of a stride-1 convolution is itself one of these (see `input_grad_as_conv`), so
//! the backward pass gains as well.
//!
//! On CPUs with AVX-512 the forward runs in wider tiles of 4 channels × 64 positions (16 accumulators
//! of the 32 registers), a plane's last one too unless an AVX2 tile holds what is left (the AVX2 tails
//! had taken as many samples as the wide tiles: a 6×6 plane is 46 positions). Each output is
//! the same chain of FMAs over (input channel, tap) in both, so the results are the same to the bit:
//! which kernel runs depends on the machine, the numbers do not. The weight gradient's dot products
//! pair two taps in the halves of one AVX-512 vector, each half the AVX2 kernel's 8-lane sum, for the
//! same reason. The 8 lanes of each sum stay in registers over a chunk of planes (up to 2048
//! positions) and are added at the chunk's end, 16 sums at a time after a transpose (one add per
//! lane, in the scalar sum's order). On the small planes of the later stages a per-plane reduction
//! had cost as much as the plane's FMAs: with chunks, 64 channels on 6×6 planes took 1.29 ms instead
//! of 1.75 (`examples/wgrad`), and 3×3 planes, which the forward leaves to im2col, run here too
//! (128 channels: 2.18 ms instead of im2col + gemm's 2.70).

use super::Dims;

/// Output channels per register tile.
const CO_BLOCK: usize = 4;
/// Vectors of 8 positions per register tile.
const VECS: usize = 2;
/// Positions per register tile.
const Q_BLOCK: usize = 8 * VECS;

/// Whether [`forward`] handles `d` here: f32 on a CPU with AVX2 and FMA, stride 1, a kernel larger than
/// 1×1×1, and at least 70 % of the computed positions kept. Small maps waste more on the padding
/// columns and the last partial register tile (3×3 planes keep 9 of 16) and go to im2col, as do
/// ASPP's large dilations, where nearly every tap reads padding anyway.
pub(super) fn applies(d: &Dims) -> bool {
    let [_, oh, ow] = d.out;
    let wp = d.input[2] + 2 * d.p.padding[2];
    let computed = ((oh - 1) * wp + ow).div_ceil(Q_BLOCK) * Q_BLOCK;
    10 * oh * ow >= 7 * computed && applies_weight_grad(d)
}

/// Whether [`weight_grad`] handles `d`: as [`applies`] but for small planes too. Its sums run over
/// all of a job's planes in registers, so the dropped padding columns cost their FMAs and no more;
/// on 3×3 planes (16 computed per 9 kept) it still took a third of im2col + gemm's time.
pub(super) fn applies_weight_grad(d: &Dims) -> bool {
    // The padded copy pads both sides equally: the output must span it exactly (a trimmed kernel,
    // see `Trim`, leaves the right side implicit and goes to im2col).
    let symmetric = (0..3).all(|a| d.input[a] + 2 * d.p.padding[a] == d.out[a] + d.p.dilation[a] * (d.kernel[a] - 1));
    d.p.stride == [1; 3] && !d.is_pointwise() && symmetric && has_avx2_fma()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2_fma() -> bool {
    false
}

/// `y = conv(x, w)` for a `d` that [`applies`].
pub(super) fn forward(d: &Dims, x: &[f32], w: &[f32]) -> Vec<f32> {
    debug_assert!(applies(d));
    #[cfg(target_arch = "x86_64")]
    {
        x86::forward(d, x, w, crate::ops::avx512())
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct::applies is false off x86-64")
}

/// The weight gradient `gw = Σ gy ⊗ x` of a `d` that [`applies_weight_grad`]; where `needed` (per input
/// channel and tap) says false, the gradient may be left 0.
pub(super) fn weight_grad(d: &Dims, x: &[f32], gy: &[f32], needed: Option<&[bool]>) -> Vec<f32> {
    debug_assert!(applies_weight_grad(d));
    #[cfg(target_arch = "x86_64")]
    {
        x86::weight_grad(d, x, gy, crate::ops::avx512(), needed)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct::applies is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{Dims, CO_BLOCK, Q_BLOCK};

    /// Positions per AVX-512 register tile (4 vectors of 16).
    const WIDE_Q: usize = 64;

    /// The padded input of one sample: `[Ci, Dp, Hp, Wp]` plus a tail of slack so that the last
    /// register tile may read past the end (into positions it then drops).
    pub(in crate::ops::conv3d) struct Padded {
        pub(in crate::ops::conv3d) data: Vec<f32>,
        pub(in crate::ops::conv3d) dims: [usize; 3],
    }

    impl Padded {
        pub(in crate::ops::conv3d) fn new(d: &Dims, x: &[f32]) -> Self {
            let [id, ih, iw] = d.input;
            let [pd, ph, pw] = d.p.padding;
            let dims = [id + 2 * pd, ih + 2 * ph, iw + 2 * pw];
            let plane = dims[1] * dims[2];
            let chan = dims[0] * plane;
            let mut data = vec![0f32; d.ci * chan + WIDE_Q];
            for ci in 0..d.ci {
                for z in 0..id {
                    for y in 0..ih {
                        let src = &x[((ci * id + z) * ih + y) * iw..][..iw];
                        let at = ci * chan + (z + pd) * plane + (y + ph) * dims[2] + pw;
                        data[at..at + iw].copy_from_slice(src);
                    }
                }
            }
            Padded { data, dims }
        }

        pub(in crate::ops::conv3d) fn channel(&self) -> usize {
            self.dims.iter().product()
        }
    }

    /// Per input channel, the taps whose weight is non-zero for some output channel. Why: the phase
    /// rewrite of a strided convolution pads its kernel with zeros (the stem: 169 of 512 taps per
    /// channel block; a stage transition's stride (1, 2, 2): 7 of 12 per phase channel), and the
    /// forward (and the input gradient, a forward of the flipped kernel) multiplied them all. Dropping
    /// an FMA with a zero weight leaves the sum as it was (it adds ±0), except that an infinite or NaN
    /// input under a zero weight no longer poisons the output. Trained dense kernels keep every tap.
    /// The stem's forward (2 × 32×96×96): minimum of 21 runs 5.7–6.4 → 4.5–5.2 ms.
    pub(in crate::ops::conv3d) fn live_taps(d: &Dims, w: &[f32]) -> Vec<Vec<usize>> {
        let taps: usize = d.kernel.iter().product();
        (0..d.ci)
            .map(|c| (0..taps).filter(|&t| (0..d.co).any(|co| w[(co * d.ci + c) * taps + t] != 0.0)).collect())
            .collect()
    }

    /// The weight as `[Co/4, Ci, live taps of ci, 4]` (output channels padded to a multiple of 4 with
    /// zeros): the four weights one tap multiplies are adjacent.
    fn pack_weight(d: &Dims, w: &[f32], live: &[Vec<usize>]) -> Vec<f32> {
        let taps: usize = d.kernel.iter().product();
        let per_block: usize = live.iter().map(Vec::len).sum::<usize>() * CO_BLOCK;
        let mut out = vec![0f32; d.co.div_ceil(CO_BLOCK) * per_block];
        for co in 0..d.co {
            let (b, j) = (co / CO_BLOCK, co % CO_BLOCK);
            let mut at = b * per_block + j;
            for (ci, ts) in live.iter().enumerate() {
                for &t in ts {
                    out[at] = w[(co * d.ci + ci) * taps + t];
                    at += CO_BLOCK;
                }
            }
        }
        out
    }

    /// `wide`: AVX-512 tiles (see `plane_job`; the caller checked the CPU has it).
    pub(in crate::ops::conv3d) fn forward(d: &Dims, x: &[f32], w: &[f32], wide: bool) -> Vec<f32> {
        let [od, oh, ow] = d.out;
        let out_size = od * oh * ow;
        let in_sample = d.ci * d.input.iter().product::<usize>();
        let live = live_taps(d, w);
        let packed = pack_weight(d, w, &live);
        let padded: Vec<Padded> =
            (0..d.n).into_par_iter().map(|n| Padded::new(d, &x[n * in_sample..(n + 1) * in_sample])).collect();
        let [_, hp, wp] = padded[0].dims;
        let all = tap_offsets(d, [hp, wp]);
        let offsets: Vec<Vec<usize>> = live.iter().map(|ts| ts.iter().map(|&t| all[t]).collect()).collect();
        let blocks = d.co.div_ceil(CO_BLOCK);
        let mut y = vec![0f32; d.n * d.co * out_size];
        // One job per (sample, channel block, output plane): disjoint outputs.
        y.par_chunks_mut(d.co * out_size).enumerate().for_each(|(n, ys)| {
            let src = &padded[n];
            let jobs: Vec<(usize, usize)> = (0..blocks).flat_map(|b| (0..od).map(move |z| (b, z))).collect();
            let ys_ptr = SendPtr(ys.as_mut_ptr());
            let per_block = packed.len() / blocks;
            jobs.par_iter().for_each(|&(b, z)| {
                let co_n = CO_BLOCK.min(d.co - b * CO_BLOCK);
                let mut planes = [std::ptr::null_mut(); CO_BLOCK];
                for (j, p) in planes.iter_mut().enumerate().take(co_n) {
                    // SAFETY: inside ys: channel b·4 + j < Co, plane z < D'.
                    *p = unsafe { ys_ptr.ptr().add((b * CO_BLOCK + j) * out_size + z * oh * ow) };
                }
                let wb = &packed[b * per_block..(b + 1) * per_block];
                // SAFETY: the job writes output plane z of channels b·4 .. b·4 + co_n only.
                unsafe { plane_job(src, z * hp * wp, wb, &offsets, [oh, ow, wp], &planes[..co_n], wide) };
            });
        });
        y
    }

    /// Each tap's offset in the padded input (rows `hp`, pitch `wp`), in the weight's tap order.
    pub(in crate::ops::conv3d) fn tap_offsets(d: &Dims, [hp, wp]: [usize; 2]) -> Vec<usize> {
        let [kd, kh, kw] = d.kernel;
        let [dd, dh, dw] = d.p.dilation;
        let mut offsets = Vec::with_capacity(kd * kh * kw);
        for a in 0..kd {
            for b in 0..kh {
                for c in 0..kw {
                    offsets.push(a * dd * hp * wp + b * dh * wp + c * dw);
                }
            }
        }
        offsets
    }

    /// Lanes per vector.
    const LANES: usize = 8;

    /// Output positions per chunk of planes in the weight gradient: a chunk's 4 gradient rows (32 KiB)
    /// and input rows stay in cache while every tap group passes over them.
    const CHUNK_POSITIONS: usize = 2048;

    thread_local! {
        /// [`gradient_on_pitch`]'s buffer, kept between calls: a fresh zeroed one (4.7 MB for the
        /// stem) is zeroed on the calling thread alone before the copy starts, and the stem's took
        /// 1.1–2.3 ms a training step on the AMD EPYC; zeroing each chunk on the worker that then
        /// fills it, 0.33–0.44 ms.
        static PITCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }

    /// The output gradient as `[N, Co4, D', lq]` on the padded row pitch `wp`, zero in the padding
    /// columns and in the channels up to `co4`, so that the dot products run over whole vectors; in
    /// `wide`, whatever it held (see [`PITCH`]).
    fn gradient_on_pitch(d: &Dims, gy: &[f32], co4: usize, wp: usize, lq: usize, mut wide: Vec<f32>) -> Vec<f32> {
        let [od, oh, ow] = d.out;
        let out_size = od * oh * ow;
        wide.resize(d.n * co4 * od * lq, 0.0);
        wide.par_chunks_mut(od * lq).enumerate().for_each(|(nc, dst)| {
            dst.fill(0.0);
            let (n, co) = (nc / co4, nc % co4);
            if co >= d.co {
                return;
            }
            let src = &gy[(n * d.co + co) * out_size..][..out_size];
            for z in 0..od {
                for y in 0..oh {
                    dst[z * lq + y * wp..][..ow].copy_from_slice(&src[(z * oh + y) * ow..][..ow]);
                }
            }
        });
        wide
    }

    /// The most planes in one chunk (a stack buffer of their pointers).
    const MAX_CHUNK_PLANES: usize = 64;

    /// One output plane of a weight-gradient job: where its input rows and its 4 gradient rows start.
    #[derive(Clone, Copy)]
    struct Plane {
        x: *const f32,
        g: *const f32,
    }

    /// `gw[co, ci, tap] = Σ_n Σ_z Σ_q gy[n, co, z, q] · xp[n, ci, z, q + offset(tap)]` over the output
    /// positions `q = y·Wp + x`. The output gradient is first laid out on the padded row pitch with
    /// zeros in the padding columns (and in channels up to a multiple of 4), so every sum runs over
    /// whole vectors. One job per (block of 4 output channels, input channel) owns its 4 × taps
    /// results: no reduction across threads, and the same sums in the same order on any thread count.
    /// `avx512`: four taps per pass in AVX-512 vectors (the caller checked the CPU has it).
    pub(super) fn weight_grad(d: &Dims, x: &[f32], gy: &[f32], avx512: bool, needed: Option<&[bool]>) -> Vec<f32> {
        let [od, oh, ow] = d.out;
        let in_sample = d.ci * d.input.iter().product::<usize>();
        let padded: Vec<Padded> =
            (0..d.n).into_par_iter().map(|n| Padded::new(d, &x[n * in_sample..(n + 1) * in_sample])).collect();
        let [_, hp, wp] = padded[0].dims;
        let offsets = tap_offsets(d, [hp, wp]);
        let taps = offsets.len();
        let lq = ((oh - 1) * wp + ow).div_ceil(LANES) * LANES;
        let blocks = d.co.div_ceil(CO_BLOCK);
        let co4 = blocks * CO_BLOCK;
        let wide = gradient_on_pitch(d, gy, co4, wp, lq, PITCH.take());
        let mut gw = vec![0f32; d.co * d.ci * taps];
        let gw_ptr = SendPtr(gw.as_mut_ptr());
        let chunk_planes = (CHUNK_POSITIONS / lq).clamp(1, MAX_CHUNK_PLANES);
        // The last group repeats the last tap; the repeat's sums are the same and overwrite it.
        let per_group = if avx512 { 4 } else { 2 };
        let groups: Vec<[usize; 4]> = (0..taps)
            .step_by(per_group)
            .map(|t| std::array::from_fn(|i| (t + i.min(per_group - 1)).min(taps - 1)))
            .collect();
        let jobs: Vec<(usize, usize)> = (0..blocks).flat_map(|b| (0..d.ci).map(move |c| (b, c))).collect();
        jobs.par_iter().for_each(|&(b, c)| {
            // Chunks of planes outside, tap groups inside: a chunk's gradient rows and input rows stay
            // in cache for all the groups (the other order streamed the whole gradient once per group),
            // and each group's sums stay in registers over the chunk's planes.
            let mut acc = vec![[[0f32; CO_BLOCK]; 4]; groups.len()];
            let plane = |i: usize| {
                let (n, z) = (i / od, i % od);
                let x = &padded[n].data[c * padded[n].channel() + z * hp * wp..];
                Plane { x: x.as_ptr(), g: wide[((n * co4 + b * CO_BLOCK) * od + z) * lq..].as_ptr() }
            };
            let mut chunk = [Plane { x: std::ptr::null(), g: std::ptr::null() }; MAX_CHUNK_PLANES];
            for first in (0..d.n * od).step_by(chunk_planes) {
                let len = chunk_planes.min(d.n * od - first);
                for (i, p) in chunk[..len].iter_mut().enumerate() {
                    *p = plane(first + i);
                }
                for (a, t) in acc.iter_mut().zip(&groups) {
                    if needed.is_some_and(|n| !t.iter().any(|&t| n[c * taps + t])) {
                        continue;
                    }
                    let o = t.map(|t| offsets[t]);
                    // SAFETY: AVX2 and FMA checked by `applies`, AVX-512 by the caller for `avx512`;
                    // x reads end within the padded channel's slack (see `plane_job`), gy reads
                    // within the 4 rows of `wide`.
                    unsafe {
                        if avx512 {
                            quad_dots(&chunk[..len], o, od * lq, lq, a);
                        } else {
                            pair_dots(&chunk[..len], [o[0], o[1]], od * lq, lq, a);
                        }
                    }
                }
            }
            let co_n = CO_BLOCK.min(d.co - b * CO_BLOCK);
            for (a, group) in acc.iter().zip(&groups) {
                for (row, &t) in a.iter().zip(group).take(per_group) {
                    for (j, &v) in row.iter().enumerate().take(co_n) {
                        // SAFETY: job (b, c) alone writes gw[b·4 + j, c, ·].
                        unsafe { *gw_ptr.ptr().add(((b * CO_BLOCK + j) * d.ci + c) * taps + t) = v };
                    }
                }
            }
        });
        PITCH.set(wide);
        gw
    }

    /// `acc[i][j] += Σ_planes Σ_{q < lq} g[j·g_stride + q] · x[off_i + q]` for two taps (`i` < 2) and
    /// four channels, the 8 lanes of each sum kept over all the planes and added at the end.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pair_dots(
        planes: &[Plane],
        [o0, o1]: [usize; 2],
        g_stride: usize,
        lq: usize,
        acc: &mut [[f32; CO_BLOCK]; 4],
    ) {
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        for &Plane { x, g } in planes {
            let mut q = 0;
            // SAFETY (whole loop): the caller guarantees lq readable floats after x + o0, x + o1 and
            // each of the four rows of g.
            unsafe {
                let (g0, g1, g2, g3) = (g, g.add(g_stride), g.add(2 * g_stride), g.add(3 * g_stride));
                let (x0, x1) = (x.add(o0), x.add(o1));
                while q < lq {
                    let u = _mm256_loadu_ps(x0.add(q));
                    let v = _mm256_loadu_ps(x1.add(q));
                    let h = _mm256_loadu_ps(g0.add(q));
                    a00 = _mm256_fmadd_ps(h, u, a00);
                    a10 = _mm256_fmadd_ps(h, v, a10);
                    let h = _mm256_loadu_ps(g1.add(q));
                    a01 = _mm256_fmadd_ps(h, u, a01);
                    a11 = _mm256_fmadd_ps(h, v, a11);
                    let h = _mm256_loadu_ps(g2.add(q));
                    a02 = _mm256_fmadd_ps(h, u, a02);
                    a12 = _mm256_fmadd_ps(h, v, a12);
                    let h = _mm256_loadu_ps(g3.add(q));
                    a03 = _mm256_fmadd_ps(h, u, a03);
                    a13 = _mm256_fmadd_ps(h, v, a13);
                    q += LANES;
                }
            }
        }
        let sums = [[a00, a01, a02, a03], [a10, a11, a12, a13]];
        for (row, vs) in acc.iter_mut().zip(&sums) {
            for (s, v) in row.iter_mut().zip(vs) {
                let mut lanes = [0f32; LANES];
                // SAFETY: lanes holds 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *v) };
                *s += lanes.iter().sum::<f32>();
            }
        }
    }

    /// [`pair_dots`] for four taps: taps 0 and 1 in the low and high halves of one AVX-512 vector, taps 2
    /// and 3 in another, each half summing its 8 lanes as the AVX2 kernel does, so the sums are its sums
    /// to the bit in half the FMAs.
    #[target_feature(enable = "avx512f")]
    unsafe fn quad_dots(planes: &[Plane], o: [usize; 4], g_stride: usize, lq: usize, acc: &mut [[f32; CO_BLOCK]; 4]) {
        // Two 8-float vectors as one 16-float one (AVX-512F has the 256-bit insert for doubles only).
        let join = |lo: __m256, hi: __m256| {
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castps_pd(_mm512_castps256_ps512(lo)),
                _mm256_castps_pd(hi),
            ))
        };
        let twice = |v: __m256| _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(v)));
        let z = _mm512_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        for &Plane { x, g } in planes {
            let mut q = 0;
            // SAFETY (whole loop): the caller guarantees lq readable floats after x + o[i] and each of
            // the four rows of g.
            unsafe {
                let (g0, g1, g2, g3) = (g, g.add(g_stride), g.add(2 * g_stride), g.add(3 * g_stride));
                let xs = o.map(|o| x.add(o));
                while q < lq {
                    let u = join(_mm256_loadu_ps(xs[0].add(q)), _mm256_loadu_ps(xs[1].add(q)));
                    let v = join(_mm256_loadu_ps(xs[2].add(q)), _mm256_loadu_ps(xs[3].add(q)));
                    let h = twice(_mm256_loadu_ps(g0.add(q)));
                    a00 = _mm512_fmadd_ps(h, u, a00);
                    a10 = _mm512_fmadd_ps(h, v, a10);
                    let h = twice(_mm256_loadu_ps(g1.add(q)));
                    a01 = _mm512_fmadd_ps(h, u, a01);
                    a11 = _mm512_fmadd_ps(h, v, a11);
                    let h = twice(_mm256_loadu_ps(g2.add(q)));
                    a02 = _mm512_fmadd_ps(h, u, a02);
                    a12 = _mm512_fmadd_ps(h, v, a12);
                    let h = twice(_mm256_loadu_ps(g3.add(q)));
                    a03 = _mm512_fmadd_ps(h, u, a03);
                    a13 = _mm512_fmadd_ps(h, v, a13);
                    q += LANES;
                }
            }
        }
        // The 16 sums of 8 lanes (tap t = 2·pair + half, channel j), 16 at a time: transposed so that
        // vector i holds lane i of every sum at 4t + j, `acc`'s own layout, then added in lane order
        // from −0.0, which is what `iter().sum()` does one sum at a time (the AVX2 kernel).
        let e = transpose_sums([a00, a01, a02, a03, a10, a11, a12, a13]);
        let sums = e.iter().fold(_mm512_set1_ps(-0.0), |s, &v| _mm512_add_ps(s, v));
        let at = acc.as_mut_ptr().cast::<f32>();
        // SAFETY: acc is 4 × CO_BLOCK = 16 contiguous floats.
        unsafe { _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), sums)) };
    }

    /// `v[4·pair + j]` holds the sums of taps `2·pair` (low 8 lanes) and `2·pair + 1` (high 8) for
    /// channel `j`; returns `e` with `e[i]` lane `4t + j` = lane `i` of tap `t`'s sum for channel `j`.
    /// Three butterfly stages of `vpermt2ps`, each trading one bit of the vector index for one of the
    /// lane index (the index vectors were derived by tracking every element; the bit-identity test
    /// checks them).
    #[target_feature(enable = "avx512f")]
    fn transpose_sums(v: [__m512; 8]) -> [__m512; 8] {
        const IDX: [[[i32; 16]; 2]; 3] = [
            [
                [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27],
                [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31],
            ],
            [
                [0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29],
                [2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31],
            ],
            [
                [0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30],
                [1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31],
            ],
        ];
        let mut v = v;
        for (stage, bit) in IDX.iter().zip([4usize, 2, 1]) {
            // SAFETY: each index table is 16 i32s.
            let idx = stage.map(|t| unsafe { _mm512_loadu_si512(t.as_ptr().cast()) });
            v = std::array::from_fn(|out| {
                let (lo, b) = (out & !bit, usize::from(out & bit != 0));
                _mm512_permutex2var_ps(v[lo], idx[b], v[lo | bit])
            });
        }
        v
    }

    /// An output buffer's pointer shared by rayon jobs that each write a disjoint part of it.
    #[derive(Clone, Copy)]
    pub(in crate::ops::conv3d) struct SendPtr(pub(in crate::ops::conv3d) *mut f32);
    unsafe impl Send for SendPtr {}
    unsafe impl Sync for SendPtr {}
    impl SendPtr {
        pub(in crate::ops::conv3d) fn ptr(self) -> *mut f32 {
            self.0
        }
    }

    /// One output plane of one channel block: register tiles along `q = y·Wp + x` (AVX-512 ones when
    /// `wide`, but for a last tile that an AVX2 one covers); positions with `x < W` are stored into
    /// `planes[j]` (`[H', W']` each).
    unsafe fn plane_job(
        src: &Padded,
        plane_base: usize,
        wb: &[f32],
        offsets: &[Vec<usize>],
        [oh, ow, wp]: [usize; 3],
        planes: &[*mut f32],
        wide: bool,
    ) {
        let chan = src.channel();
        let last = (oh - 1) * wp + ow;
        let mut tile = [[0f32; WIDE_Q]; CO_BLOCK];
        let (mut q0, mut yy, mut xx) = (0, 0, 0);
        while q0 < last {
            // SAFETY: the caller checked AVX2 and FMA (`applies`) and AVX-512 for `wide`; reads stay
            // inside `src.data` thanks to its tail of WIDE_Q slack: the largest index is (ci−1)·chan +
            // plane_base + last − 1 + max offset + WIDE_Q − 1 < data.len().
            let base = unsafe { src.data.as_ptr().add(plane_base + q0) };
            let width = if wide && last - q0 > Q_BLOCK {
                unsafe { tile_fma_wide(base, chan, wb, offsets, &mut tile) };
                WIDE_Q
            } else {
                unsafe { tile_fma(base, chan, wb, offsets, &mut tile) };
                Q_BLOCK
            };
            for t in 0..width.min(last - q0) {
                if xx < ow {
                    for (row, &plane) in tile.iter().zip(planes) {
                        // SAFETY: yy < H' and xx < W' inside this plane.
                        unsafe { *plane.add(yy * ow + xx) = row[t] };
                    }
                }
                xx += 1;
                if xx == wp {
                    (yy, xx) = (yy + 1, 0);
                }
            }
            q0 += width;
        }
    }

    /// [`tile_fma`] over 64 positions in AVX-512 vectors: the same FMAs per position in the same order.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_fma_wide(
        base: *const f32,
        chan: usize,
        wb: &[f32],
        offsets: &[Vec<usize>],
        tile: &mut [[f32; WIDE_Q]; CO_BLOCK],
    ) {
        let z = _mm512_setzero_ps();
        let (mut a00, mut a01, mut a02, mut a03) = (z, z, z, z);
        let (mut a10, mut a11, mut a12, mut a13) = (z, z, z, z);
        let (mut a20, mut a21, mut a22, mut a23) = (z, z, z, z);
        let (mut a30, mut a31, mut a32, mut a33) = (z, z, z, z);
        let mut wptr = wb.as_ptr();
        for (c, offsets) in offsets.iter().enumerate() {
            // SAFETY (whole block): see `plane_job`; `wb` holds 4 weights per live tap of every input
            // channel, in this order (`pack_weight`).
            unsafe {
                let cbase = base.add(c * chan);
                for &off in offsets {
                    let p = cbase.add(off);
                    let v0 = _mm512_loadu_ps(p);
                    let v1 = _mm512_loadu_ps(p.add(16));
                    let v2 = _mm512_loadu_ps(p.add(32));
                    let v3 = _mm512_loadu_ps(p.add(48));
                    let w = _mm512_set1_ps(*wptr);
                    a00 = _mm512_fmadd_ps(w, v0, a00);
                    a01 = _mm512_fmadd_ps(w, v1, a01);
                    a02 = _mm512_fmadd_ps(w, v2, a02);
                    a03 = _mm512_fmadd_ps(w, v3, a03);
                    let w = _mm512_set1_ps(*wptr.add(1));
                    a10 = _mm512_fmadd_ps(w, v0, a10);
                    a11 = _mm512_fmadd_ps(w, v1, a11);
                    a12 = _mm512_fmadd_ps(w, v2, a12);
                    a13 = _mm512_fmadd_ps(w, v3, a13);
                    let w = _mm512_set1_ps(*wptr.add(2));
                    a20 = _mm512_fmadd_ps(w, v0, a20);
                    a21 = _mm512_fmadd_ps(w, v1, a21);
                    a22 = _mm512_fmadd_ps(w, v2, a22);
                    a23 = _mm512_fmadd_ps(w, v3, a23);
                    let w = _mm512_set1_ps(*wptr.add(3));
                    a30 = _mm512_fmadd_ps(w, v0, a30);
                    a31 = _mm512_fmadd_ps(w, v1, a31);
                    a32 = _mm512_fmadd_ps(w, v2, a32);
                    a33 = _mm512_fmadd_ps(w, v3, a33);
                    wptr = wptr.add(CO_BLOCK);
                }
            }
        }
        let rows = [[a00, a01, a02, a03], [a10, a11, a12, a13], [a20, a21, a22, a23], [a30, a31, a32, a33]];
        for (row, a) in tile.iter_mut().zip(&rows) {
            for (s, v) in a.iter().enumerate() {
                // SAFETY: each row holds 4 × 16 floats.
                unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * s), *v) };
            }
        }
    }

    /// `tile[j][t] = Σ_ci Σ_tap wb[ci, tap, j] · base[ci·chan + offset(tap) + t]` for `t < Q_BLOCK`. The eight
    /// accumulators are named rather than an array: with an array LLVM kept one on the stack and
    /// shuffled the others every iteration, which halved the throughput.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_fma(
        base: *const f32,
        chan: usize,
        wb: &[f32],
        offsets: &[Vec<usize>],
        tile: &mut [[f32; WIDE_Q]; CO_BLOCK],
    ) {
        let z = _mm256_setzero_ps();
        let (mut a00, mut a01, mut a10, mut a11) = (z, z, z, z);
        let (mut a20, mut a21, mut a30, mut a31) = (z, z, z, z);
        let mut wptr = wb.as_ptr();
        for (c, offsets) in offsets.iter().enumerate() {
            // SAFETY (whole block): see `plane_job`; `wb` holds 4 weights per live tap of every input
            // channel, in this order (`pack_weight`).
            unsafe {
                let cbase = base.add(c * chan);
                for &off in offsets {
                    let p = cbase.add(off);
                    let v0 = _mm256_loadu_ps(p);
                    let v1 = _mm256_loadu_ps(p.add(8));
                    let w = _mm256_broadcast_ss(&*wptr);
                    a00 = _mm256_fmadd_ps(w, v0, a00);
                    a01 = _mm256_fmadd_ps(w, v1, a01);
                    let w = _mm256_broadcast_ss(&*wptr.add(1));
                    a10 = _mm256_fmadd_ps(w, v0, a10);
                    a11 = _mm256_fmadd_ps(w, v1, a11);
                    let w = _mm256_broadcast_ss(&*wptr.add(2));
                    a20 = _mm256_fmadd_ps(w, v0, a20);
                    a21 = _mm256_fmadd_ps(w, v1, a21);
                    let w = _mm256_broadcast_ss(&*wptr.add(3));
                    a30 = _mm256_fmadd_ps(w, v0, a30);
                    a31 = _mm256_fmadd_ps(w, v1, a31);
                    wptr = wptr.add(CO_BLOCK);
                }
            }
        }
        let rows = [[a00, a01], [a10, a11], [a20, a21], [a30, a31]];
        for (row, a) in tile.iter_mut().zip(&rows) {
            for (s, v) in a.iter().enumerate() {
                // SAFETY: each row holds VECS × 8 floats.
                unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * s), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Conv3dParams, Dims};
    use super::*;

    fn dims(ci: usize, input: [usize; 3], k: usize, pad: usize, dil: usize) -> Dims {
        let p = Conv3dParams { stride: [1; 3], padding: [pad; 3], dilation: [dil; 3] };
        Dims { n: 1, ci, co: 8, input, kernel: [k; 3], out: p.out_dims(input, [k; 3]).expect("kernel fits"), p }
    }

    #[test]
    fn the_kernel_takes_large_planes_and_leaves_small_or_dilated_ones_to_im2col() {
        if crate::ops::skip_without(
            "the_kernel_takes_large_planes_and_leaves_small_or_dilated_ones_to_im2col",
            &["avx2", "fma"],
        ) {
            return;
        }
        // The block and decoder convolutions of the demo network (8×24×24, 8×12×12, 8×6×6).
        assert!(applies(&dims(16, [8, 24, 24], 3, 1, 1)));
        assert!(applies(&dims(80, [8, 24, 24], 3, 1, 1)));
        assert!(applies(&dims(32, [8, 12, 12], 3, 1, 1)));
        assert!(applies(&dims(64, [8, 6, 6], 3, 1, 1)));
        // 3×3 planes keep 9 of 16 positions; ASPP's dilation 6 on them even fewer; 1×1×1 is a gemm.
        assert!(!applies(&dims(128, [8, 3, 3], 3, 1, 1)));
        // The weight gradient takes them (its sums run over all of a job's planes), but not 1×1×1.
        assert!(applies_weight_grad(&dims(128, [8, 3, 3], 3, 1, 1)));
        assert!(!applies_weight_grad(&dims(128, [8, 24, 24], 1, 0, 1)));
        assert!(!applies(&dims(128, [8, 3, 3], 3, 6, 6)));
        assert!(!applies(&dims(128, [8, 24, 24], 1, 0, 1)));
        // The cases of tests/conv3d.rs meant for this kernel.
        assert!(applies(&dims(3, [4, 20, 21], 3, 1, 1)));
        assert!(applies(&dims(5, [6, 18, 37], 3, 2, 2)));
        assert!(applies(&dims(1, [3, 17, 17], 3, 1, 1)));
    }

    /// The AVX-512 kernels give the AVX2 kernels' results to the bit (same FMAs per value, same order),
    /// forward and weight gradient, on planes with whole wide tiles, a partial one, and one too small for
    /// any; 27 taps leave a last group of three, its fourth slot repeating the last tap.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wide_tiles_give_the_narrow_tiles_bits() {
        if crate::ops::skip_without("wide_tiles_give_the_narrow_tiles_bits", &["avx2", "fma", "avx512f"]) {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for d in [dims(16, [8, 24, 24], 3, 1, 1), dims(5, [6, 18, 37], 3, 2, 2), dims(3, [4, 6, 6], 3, 1, 1)] {
            assert!(applies(&d));
            let x: Vec<f32> = (0..d.n * d.ci * d.input.iter().product::<usize>()).map(|_| next()).collect();
            let w: Vec<f32> = (0..d.co * d.ci * 27).map(|_| next()).collect();
            let gy: Vec<f32> = (0..d.n * d.co * d.out.iter().product::<usize>()).map(|_| next()).collect();
            let pairs = [
                ("forward", x86::forward(&d, &x, &w, true), x86::forward(&d, &x, &w, false)),
                (
                    "weight gradient",
                    x86::weight_grad(&d, &x, &gy, true, None),
                    x86::weight_grad(&d, &x, &gy, false, None),
                ),
            ];
            for (what, wide, narrow) in pairs {
                assert_eq!(wide.len(), narrow.len());
                let differ = wide.iter().zip(&narrow).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert_eq!(differ, 0, "{what}: {differ} of {} values differ for input {:?}", wide.len(), d.input);
            }
        }
        // 3×3 planes: weight gradient only (the forward leaves them to im2col); 2 samples × 4 planes
        // of 16 computed positions in one chunk.
        let d = Dims { n: 2, ..dims(6, [4, 3, 3], 3, 1, 1) };
        assert!(applies_weight_grad(&d) && !applies(&d));
        let x: Vec<f32> = (0..d.n * d.ci * 36).map(|_| next()).collect();
        let gy: Vec<f32> = (0..d.n * d.co * 36).map(|_| next()).collect();
        let (wide, narrow) = (x86::weight_grad(&d, &x, &gy, true, None), x86::weight_grad(&d, &x, &gy, false, None));
        assert!(wide.iter().zip(&narrow).all(|(a, b)| a.to_bits() == b.to_bits()), "3×3 planes differ");
    }
}
