//! Adam with its state exposed, so that a resumed run continues exactly where it stopped.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

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
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let lr_t = self.lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = (&m / (v.sqrt()? + self.eps * (1.0 - b2.powi(t)).sqrt())?)?;
            var.set(&(var.as_tensor() - (update * lr_t)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Moments as named tensors (`adam.m.<var>`, `adam.v.<var>`) for checkpoints.
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
