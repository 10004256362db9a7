//! Direct f32 convolution vectorised over output channels, for channel counts that are a multiple of
//! 64: the deep stages, whose planes are small.
//!
//! Why: the position-vectorised kernel ([`super::direct`]) fills its vectors with consecutive
//! positions of one padded row, which works while planes are wide. The deep stages of the demo network
//! run 64 and 128 channels on 6×6 and 3×3 planes: there a vector of 16 positions holds 9 kept ones
//! (3×3 planes, so the forward went to im2col + gemm, which for a 72-position tile and a 3456-long
//! reduction reached 35 GFLOP/s a core), and the weight gradient's horizontal sums cost as much as its
//! FMAs. Channels are the long axis there, so the vectors run along them: a register tile holds 6
//! positions (or 6 (input channel, tap) pairs for the weight gradient) × 64 output channels, each FMA
//! multiplies a broadcast input value by 16 weights (or 16 output-gradient values), and nothing is
//! reduced across lanes. Every position computed is a kept one.
//!
//! Each output is one chain of FMAs: the forward over (input channel, live tap) in the order of
//! [`super::direct`]'s kernel, so both give the same bits wherever both apply; the weight gradient over
//! (sample, position). The AVX2 tiles are narrower (2 × 32) and run the same chains, so the numbers do
//! not depend on the CPU's vector width.

use super::Dims;

/// Output channels one AVX-512 register tile covers (4 vectors); the weight is packed in groups of it.
const CO_GROUP: usize = 64;

/// Whether [`forward`] and [`weight_grad`] handle `d`: as [`super::direct::applies_weight_grad`]
/// (stride 1, padding that the output spans exactly, AVX2 + FMA), with output channels a multiple of
/// [`CO_GROUP`]. Whatever the plane: measured with `examples/conv_shapes` (batch 2, 3×3×3 kernels,
/// AVX-512, minimum of 3 runs), these tiles took 0.61 / 0.67 / 0.68 ms (forward / weight / input
/// gradient) for 64 channels on 8×6×6 against 0.69 / 0.80 / 0.67 for the position-vectorised kernel,
/// 2.00 / 2.17 / 2.05 against 2.60 / 3.37 / 2.75 on 8×12×12, and the same within noise on 8×24×24.
pub(super) fn applies(d: &Dims) -> bool {
    d.co.is_multiple_of(CO_GROUP) && super::direct::applies_weight_grad(d)
}

/// Calls `x86::$kernel` with the widest tiles the CPU has (AVX-512, else AVX2); [`applies`] is false
/// off x86-64, so the call is unreachable there.
macro_rules! widest_tiles {
    ($kernel:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            x86::$kernel($($arg,)* crate::ops::avx512())
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("channel_tiles::applies is false off x86-64")
    }};
}

/// `y = conv(x, w)` for a `d` that [`applies`].
pub(super) fn forward(d: &Dims, x: &[f32], w: &[f32]) -> Vec<f32> {
    debug_assert!(applies(d));
    widest_tiles!(forward(d, x, w))
}

/// The input gradient of a stride-1 convolution as the forward of `flipped` (its output gradient
/// convolved with the weight flipped in space and transposed in channels, see
/// `super::input_grad_as_conv`), for a `flipped` that [`applies`]; `w` is the original weight
/// `[Ci, Co, taps]` of `flipped`'s channel counts. Packing straight from `w` saves the flipped copy's
/// pass over the weight.
pub(super) fn input_grad(flipped: &Dims, gy: &[f32], w: &[f32]) -> Vec<f32> {
    debug_assert!(applies(flipped));
    widest_tiles!(input_grad(flipped, gy, w))
}

/// The weight gradient `gw = Σ gy ⊗ x` of a `d` that [`applies`].
pub(super) fn weight_grad(d: &Dims, x: &[f32], gy: &[f32]) -> Vec<f32> {
    debug_assert!(applies(d));
    widest_tiles!(weight_grad(d, x, gy))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::super::direct::x86::{tap_offsets, Padded, SendPtr};
    use super::{Dims, CO_GROUP};

    /// Positions (forward) or (input channel, tap) pairs (weight gradient) per AVX-512 register tile:
    /// 6 × 4 vectors = 24 accumulators of the 32 registers, leaving room for 4 loaded vectors and a
    /// broadcast.
    const ROWS: usize = 6;
    /// Rows per AVX2 register tile, over half a channel group: 2 × 4 accumulators of the 16 registers.
    const NARROW_ROWS: usize = 2;
    /// Output channels per AVX2 register tile.
    const NARROW_CO: usize = CO_GROUP / 2;
    /// Packed weights per pass over a job's tiles (16 KiB).
    const BLOCK_FLOATS: usize = 4096;
    /// Register tiles per forward job: 72 positions on AVX-512, a 3×3-plane sample's worth.
    const CHUNK_TILES: usize = 12;

    /// Each output position's index in the padded input of its sample, which tap `t` then reads at
    /// `+ offset(t)` (stride 1).
    fn positions(d: &Dims, [hp, wp]: [usize; 2]) -> Vec<usize> {
        let [od, oh, ow] = d.out;
        let mut q = Vec::with_capacity(od * oh * ow);
        for z in 0..od {
            for y in 0..oh {
                q.extend((0..ow).map(|x| (z * hp + y) * wp + x));
            }
        }
        q
    }

    /// A weight packed for the forward tiles: per group of 64 output channels (`stride` floats
    /// apart), `[Ci, live taps of ci, 64]`, the 64 weights one tap multiplies adjacent. Live taps have a
    /// non-zero weight for some output channel (see `direct`'s `live_taps`: the phase rewrite's zero
    /// taps); dropping the others leaves every sum as it was.
    struct Packed {
        data: Vec<f32>,
        stride: usize,
        /// Per input channel, its live taps in order.
        live: Vec<Vec<usize>>,
    }

    impl Packed {
        /// Floats a group uses.
        fn per_group(&self) -> usize {
            self.live.iter().map(Vec::len).sum::<usize>() * CO_GROUP
        }

        /// Packs `w` `[Co, Ci, taps]`. Each group's `[64, Ci·taps]` rows are transposed in 8×8 blocks:
        /// gathering the 64 weights of a tap one float at a time took 0.4–0.5 ms for 128 channels, a
        /// third of the forward; the blocks take 0.2 ms, about what streaming the weight through the
        /// cache costs.
        fn of(d: &Dims, w: &[f32]) -> Packed {
            let taps: usize = d.kernel.iter().product();
            let k = d.ci * taps;
            let live: Vec<Vec<usize>> = (0..d.ci)
                .map(|c| (0..taps).filter(|&t| (0..d.co).any(|co| w[co * k + c * taps + t] != 0.0)).collect())
                .collect();
            let dense = live.iter().all(|ts| ts.len() == taps);
            let stride = CO_GROUP * k;
            let mut data = vec![0f32; d.co * k];
            data.par_chunks_mut(stride).enumerate().for_each(|(g, dst)| {
                // SAFETY: the group's 64 rows of k floats, and k × 64 floats of destination.
                unsafe { transpose_64(w[g * stride..].as_ptr(), k, k, dst.as_mut_ptr()) };
                if !dense {
                    // Keep the live taps' rows in order: each moves only towards the front.
                    let mut at = 0;
                    for (c, ts) in live.iter().enumerate() {
                        for &t in ts {
                            let from = (c * taps + t) * CO_GROUP;
                            dst.copy_within(from..from + CO_GROUP, at);
                            at += CO_GROUP;
                        }
                    }
                }
            });
            Packed { data, stride, live }
        }

        /// Packs the flipped weight of `fd` (the input gradient as a forward, see [`input_grad`]) from
        /// the original `w` `[fd.ci, fd.co, taps]`: element `(co', c', t')` is `w[c', co', taps − 1 − t']`.
        /// For each original output channel `c'`, a group's 64 rows of taps are one contiguous block.
        fn flipped(fd: &Dims, w: &[f32]) -> Packed {
            let taps: usize = fd.kernel.iter().product();
            let live: Vec<Vec<usize>> = (0..fd.ci)
                .map(|c| {
                    let row = &w[c * fd.co * taps..][..fd.co * taps];
                    (0..taps).filter(|&t| row.chunks(taps).any(|r| r[taps - 1 - t] != 0.0)).collect()
                })
                .collect();
            let stride = CO_GROUP * fd.ci * taps;
            let mut data = vec![0f32; fd.co * fd.ci * taps];
            data.par_chunks_mut(stride).enumerate().for_each(|(g, dst)| {
                let mut block = vec![0f32; taps * CO_GROUP];
                let mut at = 0;
                for (c, ts) in live.iter().enumerate() {
                    // SAFETY: 64 rows of `taps` floats from (c, g·64), and taps × 64 floats of block.
                    unsafe {
                        transpose_64(w[(c * fd.co + g * CO_GROUP) * taps..].as_ptr(), taps, taps, block.as_mut_ptr())
                    };
                    for &t in ts {
                        let from = (taps - 1 - t) * CO_GROUP;
                        dst[at..at + CO_GROUP].copy_from_slice(&block[from..from + CO_GROUP]);
                        at += CO_GROUP;
                    }
                }
            });
            Packed { data, stride, live }
        }
    }

    /// `dst[c·64 + j] = src[j·stride + c]` for `j < 64`, `c < cols`: 8×8 blocks in AVX registers, the
    /// last `cols mod 8` columns one by one.
    #[target_feature(enable = "avx2")]
    unsafe fn transpose_64(src: *const f32, stride: usize, cols: usize, dst: *mut f32) {
        // SAFETY (whole body): the caller guarantees 64 rows of `cols` floats at `stride` from src and
        // cols × 64 floats at dst.
        unsafe {
            let whole = cols / 8 * 8;
            for c0 in (0..whole).step_by(8) {
                for j0 in (0..CO_GROUP).step_by(8) {
                    let r: [__m256; 8] = std::array::from_fn(|a| _mm256_loadu_ps(src.add((j0 + a) * stride + c0)));
                    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let columns = [
                        _mm256_permute2f128_ps::<0x20>(u0, u4),
                        _mm256_permute2f128_ps::<0x20>(u1, u5),
                        _mm256_permute2f128_ps::<0x20>(u2, u6),
                        _mm256_permute2f128_ps::<0x20>(u3, u7),
                        _mm256_permute2f128_ps::<0x31>(u0, u4),
                        _mm256_permute2f128_ps::<0x31>(u1, u5),
                        _mm256_permute2f128_ps::<0x31>(u2, u6),
                        _mm256_permute2f128_ps::<0x31>(u3, u7),
                    ];
                    for (b, v) in columns.into_iter().enumerate() {
                        _mm256_storeu_ps(dst.add((c0 + b) * CO_GROUP + j0), v);
                    }
                }
            }
            for c in whole..cols {
                for j in 0..CO_GROUP {
                    *dst.add(c * CO_GROUP + j) = *src.add(j * stride + c);
                }
            }
        }
    }

    /// `avx512`: the wide tiles (the caller checked the CPU has it).
    pub(super) fn forward(d: &Dims, x: &[f32], w: &[f32], avx512: bool) -> Vec<f32> {
        run(d, x, &Packed::of(d, w), avx512)
    }

    /// See [`super::input_grad`].
    pub(super) fn input_grad(flipped: &Dims, gy: &[f32], w: &[f32], avx512: bool) -> Vec<f32> {
        run(flipped, gy, &Packed::flipped(flipped, w), avx512)
    }

    /// Input channels per pass over a job's tiles, as `(first channel, its packed offset)` boundaries
    /// ending with `(ci, per_group)`: their packed weights (≤ 16 KiB) stay in L1 while every tile of the
    /// job uses them, instead of a group's whole weight (884 KiB for 128 channels) streaming past each
    /// tile of 6 positions. On the 2 MiB-L2 Xeon both measured the same (0.83 against 0.87 ms, 128
    /// channels on 3×3 planes); on CPUs with 512 KiB of L2 that stream would come from L3.
    fn channel_blocks(live: &[Vec<usize>], per_group: usize) -> Vec<(usize, usize)> {
        let taps_per_block = (BLOCK_FLOATS / CO_GROUP).max(1);
        let mut blocks = vec![(0, 0)];
        let mut live_in_block = 0;
        for (ci, ts) in live.iter().enumerate() {
            if live_in_block > 0 && live_in_block + ts.len() > taps_per_block {
                blocks.push((ci, blocks[blocks.len() - 1].1 + live_in_block * CO_GROUP));
                live_in_block = 0;
            }
            live_in_block += ts.len();
        }
        blocks.push((live.len(), per_group));
        blocks
    }

    /// The forward of `d` with its weight packed.
    fn run(d: &Dims, x: &[f32], packed: &Packed, avx512: bool) -> Vec<f32> {
        let out_size: usize = d.out.iter().product();
        let in_sample = d.ci * d.input.iter().product::<usize>();
        let (live, per_group) = (&packed.live, packed.per_group());
        let padded: Vec<Padded> =
            (0..d.n).into_par_iter().map(|n| Padded::new(d, &x[n * in_sample..(n + 1) * in_sample])).collect();
        let [_, hp, wp] = padded[0].dims;
        let all = tap_offsets(d, [hp, wp]);
        let offsets: Vec<Vec<usize>> = live.iter().map(|ts| ts.iter().map(|&t| all[t]).collect()).collect();
        let q = positions(d, [hp, wp]);
        let (rows, cos) = if avx512 { (ROWS, CO_GROUP) } else { (NARROW_ROWS, NARROW_CO) };
        let blocks = channel_blocks(live, per_group);
        let mut y = vec![0f32; d.n * d.co * out_size];
        let y_ptr = SendPtr(y.as_mut_ptr());
        // One job per (sample, channel tile, chunk of positions): disjoint outputs.
        let chunk = rows * CHUNK_TILES;
        let jobs: Vec<(usize, usize, usize)> = (0..d.n)
            .flat_map(|n| {
                (0..d.co).step_by(cos).flat_map(move |c| (0..out_size).step_by(chunk).map(move |p| (n, c, p)))
            })
            .collect();
        jobs.par_iter().for_each(|&(n, c0, p0)| {
            let src = &padded[n];
            let tiles: Vec<(usize, [usize; ROWS])> = (p0..(p0 + chunk).min(out_size))
                .step_by(rows)
                .map(|t0| {
                    let len = rows.min(out_size - t0);
                    // A last, partial row repeats its last position; the repeats are computed and dropped.
                    (len, std::array::from_fn(|r| q[t0 + r.min(len - 1)]))
                })
                .collect();
            let mut sums = vec![[[0f32; CO_GROUP]; ROWS]; tiles.len()];
            let group = &packed.data[(c0 / CO_GROUP) * packed.stride + c0 % CO_GROUP..];
            for pair in blocks.windows(2) {
                let [(c_lo, w_lo), (c_hi, _)] = [pair[0], pair[1]];
                for ((_, at), tile) in tiles.iter().zip(&mut sums) {
                    let base = src.data[c_lo * src.channel()..].as_ptr();
                    let (w, offsets) = (group[w_lo..].as_ptr(), &offsets[c_lo..c_hi]);
                    // SAFETY: AVX2 + FMA checked by `applies`, AVX-512 by the caller for `avx512`.
                    // Reads: the input at (ci·chan + q + offset) with q + offset inside the padded
                    // channel; the block's `live taps × 64` packed weights from w (the AVX2 tile
                    // starts at most 32 in and reads 32 of each 64).
                    unsafe {
                        if avx512 {
                            forward_tile(base, src.channel(), *at, w, offsets, tile);
                        } else {
                            forward_tile_narrow(base, src.channel(), *at, w, offsets, tile);
                        }
                    }
                }
            }
            for ((len, _), (tile, t0)) in tiles.iter().zip(sums.iter().zip((p0..).step_by(rows))) {
                for (r, row) in tile.iter().enumerate().take(*len) {
                    for (j, &v) in row.iter().enumerate().take(cos) {
                        // SAFETY: job (n, c0, p0) alone writes these channels at these positions.
                        unsafe { *y_ptr.ptr().add((n * d.co + c0 + j) * out_size + t0 + r) = v };
                    }
                }
            }
        });
        y
    }

    /// `tile[r][j] += Σ_ci Σ_live tap w[ci, tap, j] · x[ci·chan + at[r] + offset(tap)]`, 64 channels,
    /// continuing each output's chain from the sum the tile holds.
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_tile(
        x: *const f32,
        chan: usize,
        at: [usize; ROWS],
        w: *const f32,
        offsets: &[Vec<usize>],
        tile: &mut [[f32; CO_GROUP]; ROWS],
    ) {
        let mut acc = load_wide(tile);
        let mut wp = w;
        for (c, offsets) in offsets.iter().enumerate() {
            // SAFETY (whole block): see `forward`.
            unsafe {
                let base = x.add(c * chan);
                let rows = at.map(|q| base.add(q));
                for &off in offsets {
                    let w = std::array::from_fn(|s| _mm512_loadu_ps(wp.add(16 * s)));
                    rows_times_wide(&mut acc, &w, &rows, off);
                    wp = wp.add(CO_GROUP);
                }
            }
        }
        store_wide(&acc, tile);
    }

    /// [`forward_tile`] in AVX2: 2 positions × 32 channels, the same chain per output.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_tile_narrow(
        x: *const f32,
        chan: usize,
        at: [usize; ROWS],
        w: *const f32,
        offsets: &[Vec<usize>],
        tile: &mut [[f32; CO_GROUP]; ROWS],
    ) {
        let mut acc = load_narrow(tile);
        let mut wp = w;
        for (c, offsets) in offsets.iter().enumerate() {
            // SAFETY (whole block): see `forward`.
            unsafe {
                let base = x.add(c * chan);
                let rows = [base.add(at[0]), base.add(at[1])];
                for &off in offsets {
                    let w = std::array::from_fn(|s| _mm256_loadu_ps(wp.add(8 * s)));
                    rows_times_narrow(&mut acc, &w, &rows, off);
                    wp = wp.add(CO_GROUP);
                }
            }
        }
        store_narrow(&acc, tile);
    }

    /// The step both tiles' chains share: `acc[r][s] += v[s] · rows[r][at]`, row by row. Arrays, not
    /// named accumulators: fully unrolled, LLVM keeps all 24 in registers (checked in the
    /// disassembly: no accumulator touches the stack in the loop).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows_times_wide(acc: &mut [[__m512; 4]; ROWS], v: &[__m512; 4], rows: &[*const f32; ROWS], at: usize) {
        for (a, row) in acc.iter_mut().zip(rows) {
            // SAFETY: the caller guarantees rows[r] + at readable.
            let b = _mm512_set1_ps(unsafe { *row.add(at) });
            for (a, v) in a.iter_mut().zip(v) {
                *a = _mm512_fmadd_ps(*v, b, *a);
            }
        }
    }

    /// [`rows_times_wide`] in AVX2, 2 rows × 4 vectors of 8.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn rows_times_narrow(
        acc: &mut [[__m256; 4]; NARROW_ROWS],
        v: &[__m256; 4],
        rows: &[*const f32; NARROW_ROWS],
        at: usize,
    ) {
        for (a, row) in acc.iter_mut().zip(rows) {
            // SAFETY: the caller guarantees rows[r] + at readable.
            let b = _mm256_broadcast_ss(unsafe { &*row.add(at) });
            for (a, v) in a.iter_mut().zip(v) {
                *a = _mm256_fmadd_ps(*v, b, *a);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn load_wide(tile: &[[f32; CO_GROUP]; ROWS]) -> [[__m512; 4]; ROWS] {
        // SAFETY: each row holds 4 × 16 floats.
        tile.map(|row| std::array::from_fn(|s| unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * s)) }))
    }

    #[target_feature(enable = "avx2")]
    fn load_narrow(tile: &[[f32; CO_GROUP]; ROWS]) -> [[__m256; 4]; NARROW_ROWS] {
        // SAFETY: each row holds at least 4 × 8 floats.
        std::array::from_fn(|r| std::array::from_fn(|s| unsafe { _mm256_loadu_ps(tile[r].as_ptr().add(8 * s)) }))
    }

    #[target_feature(enable = "avx512f")]
    fn store_wide(acc: &[[__m512; 4]; ROWS], tile: &mut [[f32; CO_GROUP]; ROWS]) {
        for (row, a) in tile.iter_mut().zip(acc) {
            for (s, v) in a.iter().enumerate() {
                // SAFETY: each row holds 4 × 16 floats.
                unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * s), *v) };
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn store_narrow(acc: &[[__m256; 4]; NARROW_ROWS], tile: &mut [[f32; CO_GROUP]; ROWS]) {
        for (row, a) in tile.iter_mut().zip(acc) {
            for (s, v) in a.iter().enumerate() {
                // SAFETY: each row holds at least 4 × 8 floats.
                unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * s), *v) };
            }
        }
    }

    /// `gw[co, ci, tap] = Σ_n Σ_p gy[n, co, p] · xp[n, ci, q(p) + offset(tap)]`, each a chain over
    /// (sample, position). The output gradient is first transposed to `[N, P, Co]` so that a position's
    /// 64 channels load as vectors. One job per (channel tile, row of (input channel, tap) pairs) owns its
    /// results: no reduction across threads.
    pub(super) fn weight_grad(d: &Dims, x: &[f32], gy: &[f32], avx512: bool) -> Vec<f32> {
        let out_size: usize = d.out.iter().product();
        let in_sample = d.ci * d.input.iter().product::<usize>();
        let padded: Vec<Padded> =
            (0..d.n).into_par_iter().map(|n| Padded::new(d, &x[n * in_sample..(n + 1) * in_sample])).collect();
        let [_, hp, wp] = padded[0].dims;
        let chan = padded[0].channel();
        let offsets = tap_offsets(d, [hp, wp]);
        let taps = offsets.len();
        let q = positions(d, [hp, wp]);
        let mut gt = vec![0f32; gy.len()];
        gt.par_chunks_mut(out_size * d.co).enumerate().for_each(|(n, dst)| {
            for co in 0..d.co {
                let src = &gy[(n * d.co + co) * out_size..][..out_size];
                for (p, &v) in src.iter().enumerate() {
                    dst[p * d.co + co] = v;
                }
            }
        });
        let k = d.ci * taps;
        // Where pair (ci, tap) starts reading in a sample's padded input.
        let starts: Vec<usize> = (0..k).map(|i| (i / taps) * chan + offsets[i % taps]).collect();
        let (rows, cos) = if avx512 { (ROWS, CO_GROUP) } else { (NARROW_ROWS, NARROW_CO) };
        let mut gw = vec![0f32; d.co * k];
        let gw_ptr = SendPtr(gw.as_mut_ptr());
        let jobs: Vec<(usize, usize)> =
            (0..d.co).step_by(cos).flat_map(|c| (0..k).step_by(rows).map(move |i| (c, i))).collect();
        jobs.par_iter().for_each(|&(c0, i0)| {
            let len = rows.min(k - i0);
            // A last, partial row repeats its last pair; the repeats are computed and dropped.
            let pairs: [usize; ROWS] = std::array::from_fn(|r| starts[i0 + r.min(len - 1)]);
            let mut tile = [[0f32; CO_GROUP]; ROWS];
            let samples: Vec<(*const f32, *const f32)> =
                (0..d.n).map(|n| (padded[n].data.as_ptr(), gt[n * out_size * d.co + c0..].as_ptr())).collect();
            // SAFETY: AVX2 + FMA checked by `applies`, AVX-512 by the caller for `avx512`. Reads: the
            // padded input at (start + q) inside the sample's padded data, the transposed gradient at
            // p·Co + c0 + j with j < 64 (AVX2: 32) inside the sample's [P, Co].
            unsafe {
                if avx512 {
                    weight_tile(&samples, &q, d.co, pairs, &mut tile);
                } else {
                    weight_tile_narrow(&samples, &q, d.co, pairs, &mut tile);
                }
            }
            for (r, row) in tile.iter().enumerate().take(len) {
                for (j, &v) in row.iter().enumerate().take(cos) {
                    // SAFETY: job (c0, i0) alone writes gw[c0 + j, i0 + r].
                    unsafe { *gw_ptr.ptr().add((c0 + j) * k + i0 + r) = v };
                }
            }
        });
        gw
    }

    /// `tile[r][j] = Σ_samples Σ_p g[p·co + j] · x[start_r + q[p]]` for 6 pairs × 64 channels.
    #[target_feature(enable = "avx512f")]
    unsafe fn weight_tile(
        samples: &[(*const f32, *const f32)],
        q: &[usize],
        co: usize,
        starts: [usize; ROWS],
        tile: &mut [[f32; CO_GROUP]; ROWS],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 4]; ROWS];
        for &(x, g) in samples {
            // SAFETY (whole block): see `weight_grad`.
            unsafe {
                let rows = starts.map(|s| x.add(s));
                let mut gp = g;
                for &at in q {
                    let g = std::array::from_fn(|s| _mm512_loadu_ps(gp.add(16 * s)));
                    rows_times_wide(&mut acc, &g, &rows, at);
                    gp = gp.add(co);
                }
            }
        }
        store_wide(&acc, tile);
    }

    /// [`weight_tile`] in AVX2: 2 pairs × 32 channels, the same chain per output.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weight_tile_narrow(
        samples: &[(*const f32, *const f32)],
        q: &[usize],
        co: usize,
        starts: [usize; ROWS],
        tile: &mut [[f32; CO_GROUP]; ROWS],
    ) {
        let mut acc = [[_mm256_setzero_ps(); 4]; NARROW_ROWS];
        for &(x, g) in samples {
            // SAFETY (whole block): see `weight_grad`.
            unsafe {
                let rows = [x.add(starts[0]), x.add(starts[1])];
                let mut gp = g;
                for &at in q {
                    let g = std::array::from_fn(|s| _mm256_loadu_ps(gp.add(8 * s)));
                    rows_times_narrow(&mut acc, &g, &rows, at);
                    gp = gp.add(co);
                }
            }
        }
        store_narrow(&acc, tile);
    }

    #[cfg(test)]
    mod tests {
        use super::super::super::Conv3dParams;
        use super::*;

        fn noise(len: usize, seed: u64) -> Vec<f32> {
            let mut state = seed;
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        }

        fn case(n: usize, ci: usize, co: usize, input: [usize; 3]) -> Dims {
            let p = Conv3dParams { padding: [1; 3], ..Default::default() };
            Dims { n, ci, co, input, kernel: [3; 3], out: p.out_dims(input, [3; 3]).expect("fits"), p }
        }

        fn differing(a: &[f32], b: &[f32]) -> usize {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
        }

        /// The forward gives the position-vectorised kernel's bits (same chain per output), and the
        /// AVX2 tiles give the AVX-512 tiles' bits, forward and weight gradient; on the deep stages'
        /// planes, a plane whose positions leave a partial row of 6, and pairs that leave one of 6.
        #[test]
        fn channel_tiles_give_the_position_kernels_bits_at_every_vector_width() {
            let test = "channel_tiles_give_the_position_kernels_bits_at_every_vector_width";
            if crate::ops::skip_without(test, &["avx2", "fma"]) {
                return;
            }
            assert!(super::super::super::direct::applies_weight_grad(&case(1, 1, 64, [2, 3, 3])));
            // Without AVX-512 the AVX2 tiles are still checked against the position kernel; the
            // comparison with the wide tiles says it is skipped.
            let wide = !crate::ops::skip_without(&format!("{test} (AVX-512 tiles)"), &["avx512f"]);
            for (i, d) in [case(2, 64, 128, [4, 3, 3]), case(2, 128, 64, [3, 6, 6]), case(1, 5, 64, [2, 5, 4])]
                .into_iter()
                .enumerate()
            {
                assert!(super::super::applies(&d), "case {i}");
                let x = noise(d.n * d.ci * d.input.iter().product::<usize>(), 1 + i as u64);
                let w = noise(d.co * d.ci * 27, 11 + i as u64);
                let gy = noise(d.n * d.co * d.out.iter().product::<usize>(), 21 + i as u64);
                let narrow = forward(&d, &x, &w, false);
                let position = super::super::super::direct::x86::forward(&d, &x, &w, false);
                assert_eq!(differing(&narrow, &position), 0, "case {i}: forward differs from direct");
                if wide {
                    assert_eq!(differing(&forward(&d, &x, &w, true), &narrow), 0, "case {i}: forward");
                    let (a, b) = (weight_grad(&d, &x, &gy, true), weight_grad(&d, &x, &gy, false));
                    assert_eq!(differing(&a, &b), 0, "case {i}: weight gradient");
                }
            }
        }
    }
}
