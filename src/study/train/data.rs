//! Training data in memory: preprocessed volumes, foreground-biased patch crops and flips.

use crate::input::preprocess::Preprocess;
use std::path::Path;

use ndarray::{s, Array3, Axis};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::input::preprocess::{Preprocessing, Record};
use crate::input::volume::{read_volume, ReadOptions};
use crate::input::window::pad_to_patch;
use crate::study::dataset::Case;

/// A case ready for the network: normalised image and mapped labels on the network grid.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Case id.
    pub id: String,
    /// Normalised image `[D, H, W]`.
    pub image: Array3<f32>,
    /// Labels `[D, H, W]`.
    pub labels: Array3<u8>,
    /// What preprocessing did.
    pub record: Record,
    /// Flat indices of foreground voxels (for biased crops).
    foreground: Vec<usize>,
}

/// Reads and preprocesses a labelled case.
pub fn load_sample(case: &Case, prep: &Preprocessing) -> Result<Sample> {
    let label_path = case
        .label
        .as_deref()
        .ok_or_else(|| Error::invalid("case", format!("{} has no label", case.image.display())))?;
    let vol = read_volume(&case.image, &ReadOptions::default())?;
    let lab = read_volume(label_path, &ReadOptions::default())?;
    if lab.geometry.shape != vol.geometry.shape {
        return Err(Error::invalid(
            "case",
            format!(
                "{}: label shape {:?} differs from image {} shape {:?}",
                label_path.display(),
                lab.geometry.shape,
                display(&case.image),
                vol.geometry.shape
            ),
        ));
    }
    let (image, record) = prep.image(&vol)?;
    let labels = prep.labels(&lab.data, &record);
    let foreground = labels.iter().enumerate().filter(|(_, &l)| l > 0).map(|(i, _)| i).collect();
    Ok(Sample { id: case.id.clone(), image, labels, record, foreground })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Random training crops.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Crop size `[D, H, W]`.
    pub patch: [usize; 3],
    /// Probability that a crop is centred on a random foreground voxel (else uniform).
    pub foreground_fraction: f64,
    /// Mirror each axis with probability 1/2.
    pub flips: bool,
}

impl Sampler {
    /// One crop `(image, labels)` of `patch` size from `sample` (padded if the volume is smaller).
    pub fn crop(&self, sample: &Sample, rng: &mut ChaCha8Rng) -> (Array3<f32>, Array3<u8>) {
        let image = pad_to_patch(sample.image.clone(), self.patch, sample.record.pad_value);
        let labels = pad_labels(&sample.labels, self.patch);
        let shape: [usize; 3] = image.dim().into();
        let centred = !sample.foreground.is_empty() && rng.random::<f64>() < self.foreground_fraction;
        let origin: [usize; 3] = if centred {
            let flat = sample.foreground[rng.random_range(0..sample.foreground.len())];
            let (h, w) = (sample.labels.dim().1, sample.labels.dim().2);
            let c = [flat / (h * w), (flat / w) % h, flat % w];
            std::array::from_fn(|a| c[a].saturating_sub(self.patch[a] / 2).min(shape[a] - self.patch[a]))
        } else {
            std::array::from_fn(|a| rng.random_range(0..=shape[a] - self.patch[a]))
        };
        let region = s![
            origin[0]..origin[0] + self.patch[0],
            origin[1]..origin[1] + self.patch[1],
            origin[2]..origin[2] + self.patch[2]
        ];
        let mut x = image.slice(region).to_owned();
        let mut y = labels.slice(region).to_owned();
        if self.flips {
            for a in 0..3 {
                if rng.random::<bool>() {
                    x.invert_axis(Axis(a));
                    y.invert_axis(Axis(a));
                }
            }
            x = x.as_standard_layout().to_owned();
            y = y.as_standard_layout().to_owned();
        }
        (x, y)
    }
}

fn pad_labels(labels: &Array3<u8>, patch: [usize; 3]) -> Array3<u8> {
    let shape: [usize; 3] = labels.dim().into();
    if (0..3).all(|a| shape[a] >= patch[a]) {
        return labels.clone();
    }
    let padded: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let mut out = Array3::zeros(padded);
    out.slice_mut(s![..shape[0], ..shape[1], ..shape[2]]).assign(labels);
    out
}
