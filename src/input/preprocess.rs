//! The one preprocessing used by training, evaluation and the runtime, and its inverse for predictions.
//!
//! [`Preprocess::image`] returns the network input together with a [`Record`] of what it did, so a
//! prediction can be taken back to the original grid in reverse order ([`Preprocess::restore`]).

use ndarray::{Array3, Zip};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::volume::Volume;

pub use autopath_bundle::{Intensity, LabelMapping, Preprocessing};

/// What [`Preprocess::image`] did, to undo it on predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Shape of the input volume `[D, H, W]`.
    pub original_shape: [usize; 3],
    /// Shape after resampling (equal to `original_shape` without resampling).
    pub resampled_shape: [usize; 3],
    /// Value used where tiles extend past the volume: the normalised value of air.
    pub pad_value: f32,
}

/// Applying [`Preprocessing`] settings to volumes: the same steps for training, evaluation and the
/// runtime, and their inverse for predictions.
pub trait Preprocess {
    /// Normalises (and, if configured, resamples) an image volume.
    fn image(&self, volume: &Volume) -> Result<(Array3<f32>, Record)>;
    /// Normalises intensities in place; returns the normalised value of the lowest intensity (padding).
    fn normalise(&self, data: &mut Array3<f32>) -> f32;
    /// Maps a label volume onto the network grid (nearest neighbour where resampled).
    fn labels(&self, labels: &Array3<f32>, record: &Record) -> Array3<u8>;
    /// Takes a prediction on the network grid back to the original grid.
    fn restore(&self, prediction: Array3<u8>, record: &Record) -> Array3<u8>;
}

impl Preprocess for Preprocessing {
    fn image(&self, volume: &Volume) -> Result<(Array3<f32>, Record)> {
        let original_shape = volume.geometry.shape;
        let resampled_shape = match self.target_spacing {
            Some(target) => {
                if target.iter().any(|s| !s.is_finite() || *s <= 0.0) {
                    return Err(Error::invalid("target spacing", format!("{target:?} must be positive")));
                }
                let src = volume.geometry.spacing_dhw();
                std::array::from_fn(|a| ((original_shape[a] as f64 * src[a] / target[a]).round() as usize).max(1))
            }
            None => original_shape,
        };
        let mut data = if resampled_shape == original_shape {
            volume.data.clone()
        } else {
            resample_linear(&volume.data, resampled_shape)
        };
        let pad_value = self.normalise(&mut data);
        Ok((data, Record { original_shape, resampled_shape, pad_value }))
    }

    fn normalise(&self, data: &mut Array3<f32>) -> f32 {
        match self.intensity {
            Intensity::Ct { lo, hi, scale } => {
                data.par_mapv_inplace(|v| v.clamp(lo, hi) / scale);
                lo / scale
            }
            Intensity::Zscore => {
                let min = data.iter().copied().fold(f32::INFINITY, f32::min);
                let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
                for &v in data.iter().filter(|&&v| v > min) {
                    n += 1.0;
                    sum += v as f64;
                    sq += (v as f64) * (v as f64);
                }
                let mean = if n > 0.0 { sum / n } else { 0.0 };
                let std = if n > 1.0 { (sq / n - mean * mean).max(0.0).sqrt() } else { 1.0 };
                let std = if std > 1e-8 { std } else { 1.0 };
                data.par_mapv_inplace(|v| ((v as f64 - mean) / std) as f32);
                ((min as f64 - mean) / std) as f32
            }
        }
    }

    fn labels(&self, labels: &Array3<f32>, record: &Record) -> Array3<u8> {
        let mapped = labels.mapv(|v| self.labels.map(v));
        if record.resampled_shape == record.original_shape {
            mapped
        } else {
            resample_nearest(&mapped, record.resampled_shape)
        }
    }

    fn restore(&self, prediction: Array3<u8>, record: &Record) -> Array3<u8> {
        if prediction.dim() == record.original_shape.into() {
            prediction
        } else {
            resample_nearest(&prediction, record.original_shape)
        }
    }
}

/// Source coordinate of output index `i` when mapping `n_in` samples onto `n_out` (voxel centres aligned).
fn source_coord(i: usize, n_in: usize, n_out: usize) -> f64 {
    ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64)
}

/// Trilinear resampling onto `shape`, voxel centres aligned (the grid spans the same physical extent).
pub fn resample_linear(src: &Array3<f32>, shape: [usize; 3]) -> Array3<f32> {
    let (d0, h0, w0) = src.dim();
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|i| {
                let c = source_coord(i, n_in, n_out);
                let lo = c.floor() as usize;
                let hi = (lo + 1).min(n_in - 1);
                (lo, hi, (c - lo as f64) as f32)
            })
            .collect()
    };
    let (zd, yh, xw) = (axis(d0, shape[0]), axis(h0, shape[1]), axis(w0, shape[2]));
    let mut out = Array3::<f32>::zeros(shape);
    Zip::indexed(&mut out).par_for_each(|(z, y, x), o| {
        let (z0, z1, fz) = zd[z];
        let (y0, y1, fy) = yh[y];
        let (x0, x1, fx) = xw[x];
        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let plane = |zz: usize| {
            lerp(lerp(src[[zz, y0, x0]], src[[zz, y0, x1]], fx), lerp(src[[zz, y1, x0]], src[[zz, y1, x1]], fx), fy)
        };
        *o = lerp(plane(z0), plane(z1), fz);
    });
    out
}

/// Nearest-neighbour resampling onto `shape` (labels), voxel centres aligned.
pub fn resample_nearest(src: &Array3<u8>, shape: [usize; 3]) -> Array3<u8> {
    let (d0, h0, w0) = src.dim();
    let axis = |n_in: usize, n_out: usize| -> Vec<usize> {
        (0..n_out).map(|i| source_coord(i, n_in, n_out).round() as usize).collect()
    };
    let (zd, yh, xw) = (axis(d0, shape[0]), axis(h0, shape[1]), axis(w0, shape[2]));
    Array3::from_shape_fn(shape, |(z, y, x)| src[[zd[z], yh[y], xw[x]]])
}
