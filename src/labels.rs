//! From probabilities to labels, and the numbers we judge labels by: one definition each, shared by
//! training, evaluation, the path evaluator and the runtime, so that Candle and ONNX Runtime label the
//! same probabilities the same way.

use ndarray::{Array3, Array4, Axis};

use autopath_bundle::Activation;

/// Foreground threshold on sigmoid probabilities: what `compile` records in the manifest and what
/// training and evaluation use before a manifest exists.
pub const FOREGROUND_THRESHOLD: f32 = 0.5;

/// Labels from class probabilities `[K, D, H, W]`: foreground where p ≥ `threshold` (sigmoid), or the
/// most probable class, the first one on ties (as `argmax` in NumPy and PyTorch).
pub fn from_probabilities(probs: &Array4<f32>, activation: Activation, threshold: f32) -> Array3<u8> {
    match activation {
        Activation::Sigmoid => probs.index_axis(Axis(0), 0).mapv(|p| u8::from(p >= threshold)),
        Activation::Softmax { .. } => {
            let (k, d, h, w) = probs.dim();
            Array3::from_shape_fn((d, h, w), |(z, y, x)| {
                let mut best = 0;
                for c in 1..k {
                    if probs[[c, z, y, x]] > probs[[best, z, y, x]] {
                        best = c;
                    }
                }
                best as u8
            })
        }
    }
}

/// The labels [`from_probabilities`] gives for an accumulator's blended probabilities, cropped to
/// `shape`, voxel for voxel, without making the probability volume (on a 220×512×512 volume it is
/// 230 MB per class): the runtime's last step.
pub fn from_accumulator(
    accumulator: crate::input::window::Accumulator,
    shape: [usize; 3],
    activation: Activation,
    threshold: f32,
) -> Array3<u8> {
    match activation {
        Activation::Sigmoid => accumulator.map_blended(shape, |p| u8::from(p[0] >= threshold)),
        Activation::Softmax { .. } => accumulator.map_blended(shape, |p| {
            let mut best = 0;
            for c in 1..p.len() {
                if p[c] > p[best] {
                    best = c;
                }
            }
            best as u8
        }),
    }
}

/// The blended probabilities of an accumulator, one volume per channel (one pass each, so memory is
/// one f32 volume per channel), cropped to `shape`: for a resampled volume, whose probabilities go back
/// to the input's grid before the labels are taken.
pub fn blended_channels(
    accumulator: crate::input::window::Accumulator,
    shape: [usize; 3],
    activation: Activation,
) -> Vec<Array3<f32>> {
    (0..activation.channels()).map(|c| accumulator.map_blended(shape, |p| p[c])).collect()
}

/// Labels from probability volumes (one per channel): the threshold for a sigmoid output, the most
/// probable class for a softmax one.
pub fn from_channels(channels: &[Array3<f32>], activation: Activation, threshold: f32) -> Array3<u8> {
    match activation {
        Activation::Sigmoid => channels[0].mapv(|p| u8::from(p >= threshold)),
        Activation::Softmax { .. } => ndarray::Zip::indexed(&channels[0]).map_collect(|(z, y, x), _| {
            let mut best = 0;
            for c in 1..channels.len() {
                if channels[c][[z, y, x]] > channels[best][[z, y, x]] {
                    best = c;
                }
            }
            best as u8
        }),
    }
}

/// Dice of binary masks: `(2|P∩G| + ε) / (|P| + |G| + ε)` with ε = 1e-5 (1.0 when both are empty).
pub fn dice(pred: impl Iterator<Item = bool>, truth: impl Iterator<Item = bool>) -> f64 {
    let (mut inter, mut p, mut g) = (0u64, 0u64, 0u64);
    for (a, b) in pred.zip(truth) {
        inter += u64::from(a && b);
        p += u64::from(a);
        g += u64::from(b);
    }
    dice_of_counts(inter, p, g)
}

fn dice_of_counts(inter: u64, p: u64, g: u64) -> f64 {
    const EPS: f64 = 1e-5;
    (2.0 * inter as f64 + EPS) / ((p + g) as f64 + EPS)
}

/// How a label map agrees with the truth, voxel by voxel: what accuracy and Dice are made of. Counted
/// a slice at a time, so that a caller can count labels as it makes them (the path evaluator does,
/// row by row) without a whole label map.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    voxels: u64,
    same: u64,
    both: u64,
    predicted: u64,
    truth: u64,
}

impl Agreement {
    /// Counts `pred` against `truth` (the same voxels; foreground = label > 0). Branch-free with u32
    /// counters over chunks, which vectorises: the study scores every path of every volume (1,536
    /// paths of 0.8 M voxels in the demo's `eval`), and an iterator form took 7.6 % of its samples.
    pub fn add(&mut self, pred: &[u8], truth: &[u8]) {
        for (ca, cb) in pred.chunks(1 << 20).zip(truth.chunks(1 << 20)) {
            let (mut s, mut i, mut p, mut g) = (0u32, 0u32, 0u32, 0u32);
            for (&x, &y) in ca.iter().zip(cb) {
                let (fx, fy) = (u32::from(x > 0), u32::from(y > 0));
                s += u32::from(x == y);
                i += fx & fy;
                p += fx;
                g += fy;
            }
            self.voxels += ca.len().min(cb.len()) as u64;
            self.same += u64::from(s);
            self.both += u64::from(i);
            self.predicted += u64::from(p);
            self.truth += u64::from(g);
        }
    }

    /// Fraction of voxels whose label equals the truth's (the paper's reward term).
    pub fn accuracy(&self) -> f64 {
        self.same as f64 / self.voxels.max(1) as f64
    }

    /// Foreground Dice, as [`dice`].
    pub fn dice(&self) -> f64 {
        dice_of_counts(self.both, self.predicted, self.truth)
    }
}

/// Voxel accuracy (the paper's reward term) and foreground Dice of a label map against the truth.
pub fn accuracy_and_dice(pred: &Array3<u8>, truth: &Array3<u8>) -> (f64, f64) {
    let (pred, truth) = (pred.as_standard_layout(), truth.as_standard_layout());
    let mut a = Agreement::default();
    a.add(pred.as_slice().unwrap_or_default(), truth.as_slice().unwrap_or_default());
    (a.accuracy(), a.dice())
}

/// A keep mask as text, block 0 first: `10110111`.
pub fn mask_text(keep: &[bool]) -> String {
    keep.iter().map(|&k| if k { '1' } else { '0' }).collect()
}
