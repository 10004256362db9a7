//! The geometry of one convolution: its sizes and tiles ([`Dims`]), the kernel taps that only ever
//! read padding and can be trimmed away ([`Trim`]), and strided convolutions rewritten as stride-1
//! convolutions over phases of the input ([`Phases`]).

use rayon::prelude::*;

use super::Elem;
use crate::ops::params::Conv3dParams;

/// Output positions per tile: the column buffer (`K × TILE`) stays within L2 for typical K.
pub(super) const TILE: usize = 512;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) ci: usize,
    pub(super) co: usize,
    pub(super) input: [usize; 3],
    pub(super) kernel: [usize; 3],
    pub(super) out: [usize; 3],
    pub(super) p: Conv3dParams,
}

impl Dims {
    pub(super) fn k(&self) -> usize {
        self.ci * self.kernel.iter().product::<usize>()
    }
    pub(super) fn in_size(&self) -> usize {
        self.input.iter().product()
    }
    pub(super) fn out_size(&self) -> usize {
        self.out.iter().product()
    }
    /// A 1×1×1 kernel at stride 1 without padding: the input already is the column matrix.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kernel == [1; 3] && self.p.stride == [1; 3] && self.p.padding == [0; 3]
    }
    pub(super) fn tiles(&self) -> Vec<(usize, usize)> {
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
pub(super) struct Trim {
    pub(super) dims: Dims,
    pub(super) taps: [std::ops::Range<usize>; 3],
}

impl Trim {
    /// `None` when every tap is live (or trimming would need negative padding).
    pub(super) fn of(d: &Dims) -> Option<Trim> {
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
    pub(super) fn slice<T: Copy>(&self, full: &Dims, w: &[T]) -> Vec<T> {
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
    pub(super) fn expand<T: Elem>(&self, full: &Dims, g: &[T]) -> Vec<T> {
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
pub(super) struct Phases {
    pub(super) dims: Dims,
}

impl Phases {
    /// `Some` for a strided, undilated convolution: its stride-1 form over the input's phases (worth
    /// running where the direct kernel takes that form).
    pub(super) fn of(d: &Dims) -> Option<Phases> {
        let p = d.p;
        if p.stride == [1; 3] || p.dilation != [1; 3] || (0..3).any(|a| d.kernel[a] < p.stride[a]) {
            return None;
        }
        let kernel: [usize; 3] = std::array::from_fn(|a| d.kernel[a].div_ceil(p.stride[a]));
        let input: [usize; 3] = std::array::from_fn(|a| d.out[a] + kernel[a] - 1);
        let phases: usize = p.stride.iter().product();
        let dims = Dims { ci: d.ci * phases, input, kernel, p: Conv3dParams::default(), ..*d };
        Some(Phases { dims })
    }

    /// For every phase-input index along axis `a`: the source index in the original input, or
    /// `None` for padding; phase `r`, position `u` reads padded `s·u + r`.
    pub(super) fn sources(&self, d: &Dims, a: usize) -> Vec<Vec<Option<usize>>> {
        let (s, p, len) = (d.p.stride[a], d.p.padding[a], d.input[a]);
        (0..s)
            .map(|r| (0..self.dims.input[a]).map(|u| (s * u + r).checked_sub(p).filter(|&i| i < len)).collect())
            .collect()
    }

    /// Calls `f(phase channel offset, source offset)` for every phase-input voxel that maps to an
    /// input voxel of sample-channel plane `(n, ci)`, offsets within one `[D, H, W]` plane each.
    pub(super) fn for_each_voxel(&self, d: &Dims, mut f: impl FnMut(usize, usize, usize)) {
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
    pub(super) fn gather<T: Elem>(&self, d: &Dims, x: &[T]) -> Vec<T> {
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
    pub(super) fn scatter<T: Elem>(&self, d: &Dims, g: &[T]) -> Vec<T> {
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
    pub(super) fn for_each_tap(&self, d: &Dims, mut f: impl FnMut(usize, usize)) {
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
    pub(super) fn weight<T: Elem>(&self, d: &Dims, w: &[T]) -> Vec<T> {
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
    pub(super) fn live_taps(&self, d: &Dims) -> Vec<bool> {
        let mut live = vec![false; self.dims.k() / d.ci];
        self.for_each_tap(d, |to, _| live[to] = true);
        live.repeat(d.ci)
    }

    /// A phase-kernel gradient back on the original taps.
    pub(super) fn weight_back<T: Elem>(&self, d: &Dims, g: &[T]) -> Vec<T> {
        let (k, kp) = (d.k() / d.ci, self.dims.k() / d.ci);
        let mut out = vec![T::ZERO; d.co * d.k()];
        for (pair, dst) in out.chunks_mut(k).enumerate() {
            let src = &g[pair * kp..(pair + 1) * kp];
            self.for_each_tap(d, |to, from| dst[from] = src[to]);
        }
        out
    }
}
