//! BatchNorm (+ optional ReLU) as single fused passes with a hand-written backward.
//!
//! Composed from Candle primitives, a training-mode BatchNorm is ~10 full-size tensors (a transposed
//! copy for the per-channel statistics, centring, squaring, three broadcasts) forward and about as
//! many again backward, each a single-threaded strided loop; in the r18 training step that was most of
//! the non-convolution time. Here the statistics take one parallel pass over each channel's `N`
//! contiguous `D·H·W` slabs, the output one more, and the backward two (per-channel sums, then the
//! input gradient), with the ReLU mask folded in.
//!
//! Statistics accumulate in f64, so f32 training keeps the precision of the composed version.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// f32 or f64 with conversions through f64.
trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    fn f(self) -> f64;
    fn of(v: f64) -> Self;
}
impl Real for f32 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self as f64
    }
    fn of(v: f64) -> Self {
        v as f32
    }
}
impl Real for f64 {
    const ZERO: Self = 0.0;
    fn f(self) -> f64 {
        self
    }
    fn of(v: f64) -> Self {
        v
    }
}

fn geometry(l: &Layout, what: &str) -> Result<((usize, usize, usize), usize, usize)> {
    let dims = l.dims();
    if dims.len() < 2 {
        bail!("batch_norm: {what} must be [N, C, ...], got {dims:?}")
    }
    let Some((a, b)) = l.contiguous_offsets() else { bail!("batch_norm: {what} must be contiguous") };
    Ok(((dims[0], dims[1], dims[2..].iter().product()), a, b))
}

/// The contiguous `[T]` behind a storage of element type `T`, or an error naming the operand.
fn typed<'a, T: 'static>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let any: &dyn std::any::Any = match s {
        CpuStorage::F32(v) => v,
        CpuStorage::F64(v) => v,
        other => bail!("batch_norm: {what} has unsupported dtype {:?} (f32 or f64)", other.dtype()),
    };
    let Some(v) = any.downcast_ref::<Vec<T>>() else {
        bail!("batch_norm: {what} has a different dtype than the input")
    };
    let Some((a, b)) = l.contiguous_offsets() else { bail!("batch_norm: {what} must be contiguous") };
    Ok(&v[a..b])
}

/// Per-channel batch mean and biased variance (two-pass, in f64).
/// Interleaved partial sums per reduction: additions in one chain cannot be vectorised (their order
/// is fixed), eight chains can.
const LANES: usize = 8;
/// Elements per block whose lane sums (in the tensor's type) are then added in f64: f32 rounding
/// stays that of a 256-term sum, and the blocks keep one fixed order on any thread count.
const BLOCK: usize = 2048;

/// `Σ f(i)` over `0..len`: [`LANES`] interleaved partial sums in `T` per block of [`BLOCK`], blocks
/// added in f64.
#[inline(always)]
fn lane_sum<T: Real, const K: usize>(len: usize, mut f: impl FnMut(usize) -> [T; K]) -> [f64; K] {
    let mut total = [0f64; K];
    for start in (0..len).step_by(BLOCK) {
        let end = (start + BLOCK).min(len);
        let mut acc = [[T::ZERO; LANES]; K];
        let whole = start + (end - start) / LANES * LANES;
        let mut add = |lane: usize, v: [T; K]| {
            for (a, v) in acc.iter_mut().zip(v) {
                a[lane] = a[lane] + v;
            }
        };
        for base in (start..whole).step_by(LANES) {
            for lane in 0..LANES {
                add(lane, f(base + lane));
            }
        }
        for i in whole..end {
            add(0, f(i));
        }
        for (t, a) in total.iter_mut().zip(&acc) {
            *t += a.iter().map(|v| v.f()).sum::<f64>();
        }
    }
    total
}

fn channel_stats<T: Real>(x: &[T], (n, c, s): (usize, usize, usize)) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let slabs = || (0..n).map(move |i| &x[(i * c + ch) * s..(i * c + ch + 1) * s]);
            let count = (n * s) as f64;
            let mean = slabs().map(|v| lane_sum(v.len(), |i| [v[i]])[0]).sum::<f64>() / count;
            let m = T::of(mean);
            let var = slabs()
                .map(|v| {
                    lane_sum(v.len(), |i| {
                        let d = v[i] - m;
                        [d * d]
                    })[0]
                })
                .sum::<f64>()
                / count;
            (mean, var)
        })
        .collect()
}

fn affine<T: Real>(x: &[T], (_, c, s): (usize, usize, usize), coef: &[(f64, f64)], relu: bool) -> Vec<T> {
    let mut y = x.to_vec();
    y.par_chunks_mut(s).enumerate().for_each(|(slab, v)| {
        let (a, b) = coef[slab % c];
        let (a, b) = (T::of(a), T::of(b));
        for e in v {
            let t = *e * a + b;
            *e = if relu && t < T::ZERO { T::ZERO } else { t };
        }
    });
    y
}

/// The upstream gradient, zero where the fused ReLU clipped.
#[inline(always)]
fn masked<T: Real>(dy: T, y: T, relu: bool) -> T {
    if relu && y <= T::ZERO {
        T::ZERO
    } else {
        dy
    }
}

/// Per channel: `(Σ dy, Σ dy·x̂)` with `x̂ = (x − m)·k`, dy masked by the ReLU.
fn grad_sums<T: Real>(
    x: &[T],
    y: &[T],
    dy: &[T],
    (n, c, s): (usize, usize, usize),
    centre: &[(f64, f64)],
    relu: bool,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (m, k) = centre[ch];
            let mt = T::of(m);
            let (mut sum, mut dot) = (0.0, 0.0);
            for i in 0..n {
                let r = (i * c + ch) * s..(i * c + ch + 1) * s;
                let (xs, ys, gs) = (&x[r.clone()], &y[r.clone()], &dy[r]);
                let [a, b] = lane_sum(s, |j| {
                    let g = masked(gs[j], ys[j], relu);
                    [g, g * (xs[j] - mt)]
                });
                sum += a;
                dot += b * k;
            }
            (sum, dot)
        })
        .collect()
}

struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Vec<(f64, f64)>>>,
}

/// The backward of both ops: `(x, y, dy)` → `[dx | dp (C) | dq (C)]` flat, where per channel
/// `u = (x − centre)·k`, `dq = Σ dy'`, `dp = Σ dy'·u` (dgamma/dbeta, or dscale/dshift) and `dx` is
/// `gain·k·(dy' − dq/M − u·dp/M)` when the statistics came from this batch (the terms through the
/// mean and variance), else `gain·dy'`.
struct ChannelGrad {
    relu: bool,
    batch_statistics: bool,
    /// Per channel `(centre, k, gain)`.
    coef: Vec<(f64, f64, f64)>,
}

/// Fixed per-channel affine `x·scale + shift` (+ReLU), differentiable in all three: BatchNorm in
/// evaluation, where scale and shift come from gamma, beta and the running statistics.
struct ChannelAffine {
    relu: bool,
}

/// A small per-channel parameter tensor as f64 values.
fn params(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Runs `$body` with `$T` bound to the storage's element type (f32 or f64), wrapping the Vec result.
macro_rules! by_dtype {
    ($name:expr, $s:expr, |$T:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $T = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $T = f64;
                CpuStorage::F64($body)
            }
            other => bail!("{}: unsupported dtype {:?} (f32 or f64)", $name, other.dtype()),
        }
    };
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch_norm_train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, _, _) = geometry(l1, "input")?;
        let storage = by_dtype!(self.name(), s1, |T| {
            let (x, gamma, beta) =
                (typed::<T>(s1, l1, "input")?, typed::<T>(s2, l2, "gamma")?, typed::<T>(s3, l3, "beta")?);
            let stats = channel_stats(x, g);
            let coef: Vec<(f64, f64)> = stats
                .iter()
                .zip(gamma.iter().zip(beta))
                .map(|(&(m, v), (ga, be))| {
                    let a = ga.f() / (v + self.eps).sqrt();
                    (a, be.f() - m * a)
                })
                .collect();
            *self.stats.lock().expect("batch-norm statistics lock") = stats;
            affine(x, g, &coef, self.relu)
        });
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().expect("batch-norm statistics lock").clone();
        let coef = stats.iter().zip(params(gamma)?).map(|(&(m, v), g)| (m, 1.0 / (v + self.eps).sqrt(), g)).collect();
        let op = ChannelGrad { relu: self.relu, batch_statistics: true, coef };
        let flat = x.contiguous()?.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        split_grads(&flat, x, gamma.dim(0)?)
    }
}

/// `[dx | dp (C) | dq (C)]` → (dx shaped like x, dp, dq).
fn split_grads(flat: &Tensor, x: &Tensor, c: usize) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let n = x.elem_count();
    Ok((Some(flat.narrow(0, 0, n)?.reshape(x.shape())?), Some(flat.narrow(0, n, c)?), Some(flat.narrow(0, n + c, c)?)))
}

impl CustomOp3 for ChannelGrad {
    fn name(&self) -> &'static str {
        "batch_norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g @ (n, c, s), _, _) = geometry(l1, "input")?;
        let total = n * c * s;
        let storage = by_dtype!(self.name(), s1, |T| {
            let x = typed::<T>(s1, l1, "input")?;
            let y = typed::<T>(s2, l2, "output")?;
            let dy = typed::<T>(s3, l3, "gradient")?;
            let centre: Vec<(f64, f64)> = self.coef.iter().map(|&(m, k, _)| (m, k)).collect();
            let sums = grad_sums(x, y, dy, g, &centre, self.relu);
            let count = (n * s) as f64;
            let mut out = vec![T::of(0.0); total + 2 * c];
            let (dx, rest) = out.split_at_mut(total);
            dx.par_chunks_mut(s).enumerate().for_each(|(slab, d)| {
                let ch = slab % c;
                let (m, k, gain) = self.coef[ch];
                let (sum, dot) = sums[ch];
                // dx = gain·k·(dy − Σdy/N − x̂·Σdy·x̂/N), x̂ = (x − m)·k; or gain·dy with fixed statistics.
                let (a, b, slope, mt) = if self.batch_statistics {
                    (T::of(gain * k), T::of(sum / count), T::of(k * dot / count), T::of(m))
                } else {
                    (T::of(gain), T::ZERO, T::ZERO, T::ZERO)
                };
                let r = slab * s..(slab + 1) * s;
                for ((o, &xv), (&yv, &gv)) in d.iter_mut().zip(&x[r.clone()]).zip(y[r.clone()].iter().zip(&dy[r])) {
                    *o = a * (masked(gv, yv, self.relu) - b - (xv - mt) * slope);
                }
            });
            for (ch, &(sum, dot)) in sums.iter().enumerate() {
                rest[ch] = T::of(dot);
                rest[c + ch] = T::of(sum);
            }
            out
        });
        Ok((storage, Shape::from_dims(&[total + 2 * c])))
    }
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "channel_affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, _, _) = geometry(l1, "input")?;
        let storage = by_dtype!(self.name(), s1, |T| {
            let x = typed::<T>(s1, l1, "input")?;
            let scale = typed::<T>(s2, l2, "scale")?;
            let shift = typed::<T>(s3, l3, "shift")?;
            let coef: Vec<(f64, f64)> = scale.iter().zip(shift).map(|(a, b)| (a.f(), b.f())).collect();
            affine(x, g, &coef, self.relu)
        });
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let coef = params(scale)?.into_iter().map(|k| (0.0, 1.0, k)).collect();
        let op = ChannelGrad { relu: self.relu, batch_statistics: false, coef };
        let flat = x.contiguous()?.apply_op3_no_bwd(y, &dy.contiguous()?, &op)?;
        split_grads(&flat, x, scale.dim(0)?)
    }
}

/// Training-mode BatchNorm of `[N, C, ...]` with batch statistics (biased variance), optionally
/// followed by ReLU, differentiable in x, gamma and beta. Returns the output and the batch's
/// per-channel `(mean, biased variance)` for the running estimates.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<(f64, f64)>)> {
    if !x.device().is_cpu() {
        bail!("batch_norm_train: only the CPU path is fused (tensor on {:?})", x.device().location())
    }
    let stats = Arc::new(Mutex::new(Vec::new()));
    let op = BatchNormTrain { eps, relu, stats: stats.clone() };
    let y = x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let s = stats.lock().expect("batch-norm statistics lock").clone();
    Ok((y, s))
}

/// `x·scale[c] + shift[c]` over `[N, C, ...]`, optionally followed by ReLU, differentiable in all
/// three arguments.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    if !x.device().is_cpu() {
        bail!("channel_affine: only the CPU path is fused (tensor on {:?})", x.device().location())
    }
    x.contiguous()?.apply_op3(&scale.contiguous()?, &shift.contiguous()?, ChannelAffine { relu })
}
