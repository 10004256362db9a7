//! The AutoPath reward and the REINFORCE loss with a self-critical baseline and curriculum.

use candle_core::{Result, Tensor};

/// Voxel-level reward of a path: every correct voxel earns `1 − u²` (u = fraction of blocks kept),
/// every wrong one costs `τ`, averaged: `R = acc·(1 − u²) − τ·(1 − acc)`.
pub fn reward(accuracy: f64, kept: usize, blocks: usize, tau: f64) -> f64 {
    let u = kept as f64 / blocks as f64;
    accuracy * (1.0 - u * u) - tau * (1.0 - accuracy)
}

/// Exploration bound: `p' = α·p + (1 − α)·(1 − p)`, so p' ∈ [1 − α, α] for α ≥ 1/2.
pub fn bounded(p: &Tensor, alpha: f64) -> Result<Tensor> {
    (p * alpha)? + ((1.0 - p)? * (1.0 - alpha))?
}

/// Which blocks the curriculum lets the policy learn in epoch `epoch` (0-based): the last
/// `c = min(N, 1 + epoch / E_c)` blocks; the others are forced to keep.
pub fn learned_blocks(blocks: usize, epoch: usize, curriculum_epochs: usize) -> Vec<bool> {
    let c = (1 + epoch / curriculum_epochs.max(1)).min(blocks);
    (0..blocks).map(|n| n >= blocks - c).collect()
}

/// REINFORCE loss for a batch, with `p_bounded` `[B, N]` the sampling probabilities, `actions`
/// `[B, N]` (1 keep, 0 drop), `advantage` `[B]` = R(sampled) − R(greedy), and `learned` `[N]` (1 for
/// blocks the curriculum trains, 0 for forced ones, which take no gradient):
///
/// `loss = (1/B) Σ_b Σ_n learned_n · (−A_b · log π(a_bn) − β · H(p'_bn))`
/// with `log π(a) = a log p' + (1 − a) log(1 − p')` and `H(p') = −p' log p' − (1 − p') log(1 − p')`.
pub fn reinforce_loss(
    p_bounded: &Tensor,
    actions: &Tensor,
    advantage: &Tensor,
    learned: &Tensor,
    beta: f64,
) -> Result<Tensor> {
    let b = p_bounded.dim(0)? as f64;
    let p = p_bounded.clamp(1e-7, 1.0 - 1e-7)?;
    let q = (1.0 - &p)?;
    let (lp, lq) = (p.log()?, q.log()?);
    let log_pi = ((actions * &lp)? + ((1.0 - actions)? * &lq)?)?;
    let entropy = ((&p * &lp)? + (&q * &lq)?)?.neg()?;
    let pg = log_pi.broadcast_mul(&advantage.unsqueeze(1)?)?.neg()?;
    let per = (pg - (entropy * beta)?)?.broadcast_mul(&learned.unsqueeze(0)?)?;
    per.sum_all()? / b
}
