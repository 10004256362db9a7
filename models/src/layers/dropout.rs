//! Dropout with masks from a seeded, counter-based stream: reproducible, and resumable by saving
//! the counter (Candle's CPU generator cannot be seeded).

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1−p).
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    seed: AtomicU64,
    calls: AtomicU64,
}

impl Clone for Dropout {
    fn clone(&self) -> Self {
        let (seed, calls) = self.state();
        Dropout { p: self.p, seed: AtomicU64::new(seed), calls: AtomicU64::new(calls) }
    }
}

impl Dropout {
    /// Dropout with probability `p`, seed 0.
    pub fn new(p: f64) -> Self {
        Dropout { p, seed: AtomicU64::new(0), calls: AtomicU64::new(0) }
    }

    /// `(seed, calls so far)`, for checkpoints.
    pub fn state(&self) -> (u64, u64) {
        (self.seed.load(Ordering::Relaxed), self.calls.load(Ordering::Relaxed))
    }

    /// Restores the stream.
    pub fn set_state(&self, seed: u64, calls: u64) {
        self.seed.store(seed, Ordering::Relaxed);
        self.calls.store(calls, Ordering::Relaxed);
    }

    /// Applies dropout (training only).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed.load(Ordering::Relaxed));
        rng.set_stream(call);
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.random::<f64>() < self.p { 0.0 } else { scale as f32 }).collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}
