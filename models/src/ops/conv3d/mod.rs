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
//! [`geometry::Phases`]) run in direct kernels instead, without a column matrix: [`channel_tiles`] (vectors along
//! the output channels) where those are a multiple of 64, else [`direct`] (vectors along a padded row)
//! where the rows are long enough.
//!
//! Here: the element types and the Candle ops (forward, both gradients); [`geometry`]: sizes, dead-tap
//! trimming and phases; [`im2col`]: the kernels for every shape.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

mod channel_tiles;
mod direct;

use super::params::Conv3dParams;

mod geometry;
mod im2col;

use geometry::Dims;
use im2col::{forward, input_grad, weight_grad};

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
    use super::geometry::{Phases, Trim};
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
