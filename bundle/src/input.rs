//! The input contract's settings: how intensities and labels are mapped and how a volume is tiled.
//! Recorded in training runs and bundles, so that training, evaluation and the runtime apply the same.
//! The arithmetic that applies them to volumes lives with the volumes (`autopath::input`).

use serde::{Deserialize, Serialize};

use crate::error::{BundleError, Result};

/// How image intensities become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intensity {
    /// CT: clip to `[lo, hi]` HU, then divide by `scale` (reference: [-200, 250] / 200).
    Ct {
        /// Lower clip (HU).
        lo: f32,
        /// Upper clip (HU).
        hi: f32,
        /// Divisor after clipping.
        scale: f32,
    },
    /// MRI: zero mean, unit variance over the body (voxels above the image minimum).
    Zscore,
}

impl Default for Intensity {
    fn default() -> Self {
        Intensity::Ct { lo: -200.0, hi: 250.0, scale: 200.0 }
    }
}

/// How label values become training targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelMapping {
    /// Foreground = label > 0 (liver and tumour merged), one sigmoid channel.
    #[default]
    Merge,
    /// Keep label values as classes (softmax over `max label + 1` channels).
    Keep,
}

impl LabelMapping {
    /// Maps one raw label value.
    pub fn map(self, v: f32) -> u8 {
        let v = v.round().clamp(0.0, 255.0) as u8;
        match self {
            LabelMapping::Merge => u8::from(v > 0),
            LabelMapping::Keep => v,
        }
    }
}

/// Preprocessing settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Preprocessing {
    /// Intensity normalisation.
    pub intensity: Intensity,
    /// Label mapping.
    pub labels: LabelMapping,
    /// Resample to this spacing (mm, array order `[D, H, W]`) before the network; `None` keeps the grid.
    pub target_spacing: Option<[f64; 3]>,
}

/// How overlapping tiles are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Blend {
    /// Every voxel of a tile counts the same.
    Constant,
    /// Gaussian centred on the tile, sigma = `sigma_scale` × tile size per axis (nnU-Net uses 1/8):
    /// tile borders, where the network sees least context, count least.
    Gaussian {
        /// Sigma as a fraction of the tile size.
        sigma_scale: f32,
    },
}

impl Default for Blend {
    fn default() -> Self {
        Blend::Gaussian { sigma_scale: 0.125 }
    }
}

/// Sliding-window settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Tile size `[D, H, W]`.
    pub patch: [usize; 3],
    /// Fraction of a tile shared with its neighbour, in `[0, 1)`.
    pub overlap: f32,
    /// Weighting of overlapping tiles.
    pub blend: Blend,
}

impl WindowConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.patch.contains(&0) {
            return Err(BundleError::setting("patch size", format!("{:?} has a zero extent", self.patch)));
        }
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(BundleError::setting("overlap", format!("{} is not in [0, 1)", self.overlap)));
        }
        if let Blend::Gaussian { sigma_scale } = self.blend {
            if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
                return Err(BundleError::setting("blend", format!("sigma scale {sigma_scale} must be positive")));
            }
        }
        Ok(())
    }

    /// Tile start positions along one axis: evenly spaced from 0 to `size - patch`, with at most
    /// `patch × (1 − overlap)` between starts. An axis shorter than the patch gets one tile at 0 (the
    /// volume is padded to the patch first).
    pub fn starts(&self, size: usize, patch: usize) -> Vec<usize> {
        if size <= patch {
            return vec![0];
        }
        let step = ((patch as f32) * (1.0 - self.overlap)).max(1.0);
        let span = (size - patch) as f32;
        let n = (span / step).ceil() as usize + 1;
        (0..n).map(|i| ((span * i as f32) / (n - 1) as f32).round() as usize).collect()
    }

    /// All tile origins for a volume of `shape` (after padding), in raster order.
    pub fn tiles(&self, shape: [usize; 3]) -> Vec<[usize; 3]> {
        let [sd, sh, sw] = [0, 1, 2].map(|a| self.starts(shape[a], self.patch[a]));
        let mut out = Vec::with_capacity(sd.len() * sh.len() * sw.len());
        for &d in &sd {
            for &h in &sh {
                for &w in &sw {
                    out.push([d, h, w]);
                }
            }
        }
        out
    }
}
