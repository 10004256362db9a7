//! Segmentation losses: soft Dice plus binary cross-entropy (sigmoid) or cross-entropy (softmax).

use candle_core::{DType, Result, Tensor, D};

use crate::spec::Output;

/// Soft Dice + BCE for one foreground channel, or soft Dice (foreground classes) + CE for softmax.
/// `logits` `[B, K, D, H, W]`, `target` `[B, D, H, W]` with class indices (u8 or float).
pub fn segmentation_loss(logits: &Tensor, target: &Tensor, output: Output) -> Result<Tensor> {
    let (b, k, d, h, w) = logits.dims5()?;
    let dt = logits.dtype();
    match output {
        Output::Sigmoid => {
            let x = logits.reshape((b, d * h * w))?;
            let y = target.to_dtype(dt)?.reshape((b, d * h * w))?;
            if crate::ops::cpu_kernels(&x) {
                return crate::ops::bce_dice::bce_dice(&x, &y);
            }
            // Stable BCE with logits: max(x, 0) − x·y + log(1 + e^{−|x|}).
            let bce = ((x.relu()? - (&x * &y)?)? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?.mean_all()?;
            let p = candle_nn::ops::sigmoid(&x)?;
            bce + soft_dice_loss(&p, &y)?
        }
        Output::Softmax { .. } => {
            let x = logits.permute((0, 2, 3, 4, 1))?.reshape((b * d * h * w, k))?;
            let labels = target.to_dtype(DType::U32)?.flatten_all()?;
            let ce = candle_nn::loss::cross_entropy(&x, &labels)?;
            let p = candle_nn::ops::softmax(&x, D::Minus1)?;
            let onehot = candle_nn::encoding::one_hot(labels, k, 1f32, 0f32)?.to_dtype(dt)?;
            // Dice over foreground classes, per sample.
            let p = p
                .reshape((b, d * h * w, k))?
                .narrow(2, 1, k - 1)?
                .transpose(1, 2)?
                .reshape((b * (k - 1), d * h * w))?;
            let y = onehot
                .reshape((b, d * h * w, k))?
                .narrow(2, 1, k - 1)?
                .transpose(1, 2)?
                .reshape((b * (k - 1), d * h * w))?;
            ce + soft_dice_loss(&p, &y)?
        }
    }
}

/// `1 − mean_b (2 Σ p·y + 1) / (Σ p + Σ y + 1)` over rows `[B, V]`.
pub fn soft_dice_loss(p: &Tensor, y: &Tensor) -> Result<Tensor> {
    let inter = (p * y)?.sum(1)?;
    let denom = ((p.sum(1)? + y.sum(1)?)? + 1.0)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&denom)?;
    1.0 - dice.mean_all()?
}
