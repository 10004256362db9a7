//! Deterministic parameter initialisation: Candle's CPU random generator cannot be seeded, so new
//! variables are drawn here from a seeded ChaCha stream, in construction order.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// A [`VarMap`] whose new variables come from a seeded generator.
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    rng: Arc<Mutex<ChaCha8Rng>>,
}

impl SeededVarMap {
    /// An empty map drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededVarMap { varmap: VarMap::new(), rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))) }
    }

    /// The variables created so far.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The variables created so far, with their names.
    pub fn named(&self) -> Vec<(String, Var)> {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A builder that creates variables in this map.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn draw(&self, shape: &Shape, init: Init) -> Vec<f64> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f64> {
            let d = Normal::new(mean, std.max(1e-12)).expect("finite std");
            (0..n).map(|_| d.sample(rng)).collect()
        };
        let uniform = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| -> Vec<f64> {
            if hi <= lo {
                return vec![lo; n];
            }
            let d = Uniform::new(lo, hi).expect("lo < hi");
            (0..n).map(|_| d.sample(rng)).collect()
        };
        match init {
            Init::Const(c) => vec![c; n],
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
            Init::Kaiming { dist, fan, non_linearity } => {
                let fan = fan.for_shape(shape);
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                    NormalOrUniform::Uniform => uniform(&mut rng, -(3f64.sqrt()) * std, 3f64.sqrt() * std),
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(v) = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            if v.shape() != &s {
                candle_core::bail!("variable {name}: shape {:?}, requested {s:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = self.draw(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        self.varmap.data().lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("variable {name}: a new variable needs a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }
}
