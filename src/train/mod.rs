//! Training and evaluation drivers (behind the `train` feature): they read data with this crate's
//! volume and preprocessing code and hand tensors to `autopath-models`.

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod device_check;
pub mod policy;
pub mod predict;
pub mod segment;

/// Dice of binary masks: `(2|P∩G| + ε) / (|P| + |G| + ε)` with ε = 1e-5 (1.0 when both are empty).
pub fn dice(pred: impl Iterator<Item = bool>, truth: impl Iterator<Item = bool>) -> f64 {
    let (mut inter, mut p, mut g) = (0u64, 0u64, 0u64);
    for (a, b) in pred.zip(truth) {
        inter += u64::from(a && b);
        p += u64::from(a);
        g += u64::from(b);
    }
    const EPS: f64 = 1e-5;
    (2.0 * inter as f64 + EPS) / ((p + g) as f64 + EPS)
}
