//! Adam with its state exposed, so that a resumed run continues exactly where it stopped.

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Adam (Kingma & Ba), no weight decay, as `torch.optim.Adam` with default betas.
pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: u64,
    /// Learning rate (the schedule sets it each epoch).
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Adam over named variables (sorted by name, so the state order is stable).
    pub fn new(mut vars: Vec<(String, Var)>, lr: f64) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Adam { vars, m, v, step: 0, lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 })
    }

    /// One update from the gradients of the last backward pass. Variables without a gradient (e.g.
    /// blocks a path skipped) are left as they are, moments included.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_with(grads, true)
    }

    /// [`Adam::step`], with the fused CPU passes allowed or not (the test compares the two).
    fn step_with(&mut self, grads: &GradStore, allow_fused: bool) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let lr_t = self.lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        let eps_t = self.eps * (1.0 - b2.powi(t)).sqrt();
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let p = var.as_tensor();
            if allow_fused && fused(&[p, g, &self.m[i], &self.v[i]]) {
                self.m[i].inplace_op2(g, &Moment { beta: b1, square: false })?;
                self.v[i].inplace_op2(g, &Moment { beta: b2, square: true })?;
                p.inplace_op3(&self.m[i], &self.v[i], &Descend { lr: lr_t, eps: eps_t })?;
                continue;
            }
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = (&m / (v.sqrt()? + eps_t)?)?;
            var.set(&(p - (update * lr_t)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Moments as named tensors (`adam.m.<var>`, `adam.v.<var>`) for checkpoints; the next
    /// [`Adam::step`] may update them in place, so save them before stepping again.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("adam.m.{name}"), self.m[i].clone()));
            out.push((format!("adam.v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restores moments and the step count saved by [`Adam::state`].
    pub fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>, step: u64) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            match (get(&format!("adam.m.{name}")), get(&format!("adam.v.{name}"))) {
                (Some(m), Some(v)) => {
                    self.m[i] = m;
                    self.v[i] = v;
                }
                _ => candle_core::bail!("optimizer state for {name} missing from the checkpoint"),
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Whether the update of these tensors (parameter, gradient, moments) can take the fused CPU passes:
/// all contiguous CPU storages of one float type, and the CPU kernels not switched off.
///
/// Why fused: composed from tensor operations, an update is twelve single-threaded passes that each
/// allocate a parameter-sized tensor; in the r18 training step that was 17 % of the main thread's
/// time (perf), while the convolutions' worker threads waited. The fused passes go through the very
/// same `f32`/`f64` operations per element, in the same order, so both paths give the same bits (a
/// test compares them), and the composed one stays for CUDA.
fn fused(ts: &[&Tensor]) -> bool {
    let dtype = ts[0].dtype();
    matches!(dtype, DType::F32 | DType::F64)
        && ts.iter().all(|t| crate::ops::cpu_kernels(t) && t.dtype() == dtype && t.is_contiguous())
}

/// Elements per parallel task: small tensors (biases, BatchNorm) stay on the calling thread.
const CHUNK: usize = 1 << 14;

/// `m ← (m·β + 0) + (g·(1 − β) + 0)`, or with `g·g` for the second moment: the composed update's
/// `affine`, `sqr` and `add`, element by element.
struct Moment {
    beta: f64,
    square: bool,
}

/// `p ← p − ((m / (√v·1 + ε))·lr + 0)`: the composed update's `sqrt`, `affine`, `div`, `affine` and
/// `sub`, element by element.
struct Descend {
    lr: f64,
    eps: f64,
}

/// The contiguous elements of a storage, or an error naming the operand.
fn elements<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("adam: {what} must be contiguous") };
    Ok(&s.as_slice::<T>()?[a..b])
}

macro_rules! float_storage {
    ($name:expr, $dst:expr, $l:expr, |$T:ident, $d:ident| $body:expr) => {{
        let Some((a, b)) = $l.contiguous_offsets() else { bail!("{}: destination must be contiguous", $name) };
        match $dst {
            CpuStorage::F32(v) => {
                type $T = f32;
                let $d = &mut v[a..b];
                $body
            }
            CpuStorage::F64(v) => {
                type $T = f64;
                let $d = &mut v[a..b];
                $body
            }
            other => bail!("{}: unsupported dtype {:?} (f32 or f64)", $name, other.dtype()),
        }
    }};
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        float_storage!(self.name(), s1, l1, |T, m| {
            let g = elements::<T>(s2, l2, "gradient")?;
            if g.len() != m.len() {
                bail!("adam: gradient has {} elements, moment {}", g.len(), m.len())
            }
            let (beta, rest, zero) = (self.beta as T, (1.0 - self.beta) as T, 0.0 as T);
            let square = self.square;
            m.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = if square { g * g } else { g };
                    *m = (*m * beta + zero) + (g * rest + zero);
                }
            });
        });
        Ok(())
    }
}

impl InplaceOp3 for Descend {
    fn name(&self) -> &'static str {
        "adam-descend"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        float_storage!(self.name(), s1, l1, |T, p| {
            let m = elements::<T>(s2, l2, "first moment")?;
            let v = elements::<T>(s3, l3, "second moment")?;
            if m.len() != p.len() || v.len() != p.len() {
                bail!("adam: parameter has {} elements, moments {} and {}", p.len(), m.len(), v.len())
            }
            let (lr, eps, one, zero) = (self.lr as T, self.eps as T, 1.0 as T, 0.0 as T);
            p.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(p, (m, v))| {
                for (p, (&m, &v)) in p.iter_mut().zip(m.iter().zip(v)) {
                    *p -= (m / (v.sqrt() * one + eps)) * lr + zero;
                }
            });
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Runs `steps` updates of `loss = Σ c·p²` (per-element gradients of both signs, some zero) over
    /// parameters of several sizes, one above [`CHUNK`] so the parallel split is exercised; returns
    /// the parameters, then the moments.
    fn train(dtype: DType, allow_fused: bool, steps: usize) -> Result<Vec<Vec<f64>>> {
        let dev = Device::Cpu;
        let sizes = [3usize, 64, 3 * CHUNK + 17];
        let mut vars = Vec::new();
        let mut coef = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let init: Vec<f64> = (0..n).map(|k| ((k * 7919 + i * 13) % 1000) as f64 / 250.0 - 2.0).collect();
            vars.push((format!("p{i}"), Var::from_tensor(&Tensor::new(init, &dev)?.to_dtype(dtype)?)?));
            let c: Vec<f64> = (0..n).map(|k| [0.5, -1.25, 0.0, 3.0, 1e-3][k % 5]).collect();
            coef.push(Tensor::new(c, &dev)?.to_dtype(dtype)?);
        }
        let mut adam = Adam::new(vars.clone(), 0.01)?;
        for _ in 0..steps {
            let mut loss = Tensor::zeros((), dtype, &dev)?;
            for ((_, v), c) in vars.iter().zip(&coef) {
                loss = (loss + (v.as_tensor().sqr()? * c)?.sum_all()?)?;
            }
            adam.step_with(&loss.backward()?, allow_fused)?;
        }
        let mut out = Vec::new();
        for t in vars.iter().map(|(_, v)| v.as_tensor().clone()).chain(adam.state().into_iter().map(|(_, t)| t)) {
            out.push(t.to_dtype(DType::F64)?.to_vec1()?);
        }
        Ok(out)
    }

    #[test]
    fn fused_update_gives_the_composed_updates_bits() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let fused = train(dtype, true, 5)?;
            let composed = train(dtype, false, 5)?;
            for (a, b) in fused.iter().zip(&composed) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{dtype:?}: fused and composed Adam differ");
            }
            // And the parameters moved: the comparison is not between two untouched copies.
            let start = train(dtype, true, 0)?;
            assert!(fused[2].iter().zip(&start[2]).filter(|(a, b)| a != b).count() > fused[2].len() / 2);
        }
        Ok(())
    }
}
