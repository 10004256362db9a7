//! The guard for volumes unlike the training set: intensity features of the policy's input (the
//! preprocessed volume resampled to the policy's size), how they were distributed over the volumes the
//! bundle was calibrated on, and a bound beyond which a volume takes the full network instead of the
//! policy's path. `compile` measures the distribution; the runtime's `--guard` applies the bound.

use serde::{Deserialize, Serialize};

/// Names of the features, in order: the mean, the standard deviation and five quantiles of the
/// policy input's values.
pub const FEATURES: [&str; 7] = ["mean", "std", "q05", "q25", "q50", "q75", "q95"];

/// The bound is this many times the largest distance of a calibration volume (and at least
/// [`MIN_BOUND`]): the calibration volumes all pass, with room for the spread of new ones.
pub const BOUND_FACTOR: f64 = 1.5;

/// The smallest bound, in standard deviations.
pub const MIN_BOUND: f64 = 4.0;

/// The calibrated distribution of the features, stored in the manifest's policy entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Guard {
    /// Feature names ([`FEATURES`]).
    pub features: Vec<String>,
    /// Mean of each feature over the calibration volumes.
    pub mean: Vec<f64>,
    /// Standard deviation of each feature (floored, so that a feature constant over the calibration
    /// volumes does not make every other value infinitely far).
    pub std: Vec<f64>,
    /// Largest distance a volume may have and still take the policy's path.
    pub bound: f64,
    /// Volumes the distribution was measured on.
    pub volumes: usize,
}

/// The features of a policy input's values.
pub fn features(values: &[f32]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().map(|&x| x as f64).filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return vec![0.0; FEATURES.len()];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let q = |p: f64| v[((p * (n - 1.0)).round() as usize).min(v.len() - 1)];
    vec![mean, std, q(0.05), q(0.25), q(0.5), q(0.75), q(0.95)]
}

impl Guard {
    /// The distribution of the calibration volumes' features and its bound; None without volumes.
    pub fn calibrate(per_volume: &[Vec<f64>]) -> Option<Guard> {
        let n = per_volume.len();
        if n == 0 {
            return None;
        }
        let k = FEATURES.len();
        let mean: Vec<f64> = (0..k).map(|i| per_volume.iter().map(|f| f[i]).sum::<f64>() / n as f64).collect();
        let std: Vec<f64> = (0..k)
            .map(|i| {
                let var = per_volume.iter().map(|f| (f[i] - mean[i]).powi(2)).sum::<f64>() / n as f64;
                // Floor: 5 % of the feature's scale, or 0.01.
                var.sqrt().max(0.05 * mean[i].abs()).max(0.01)
            })
            .collect();
        let mut guard = Guard { features: FEATURES.map(String::from).to_vec(), mean, std, bound: 0.0, volumes: n };
        let widest = per_volume.iter().map(|f| guard.distance(f)).fold(0.0, f64::max);
        guard.bound = (BOUND_FACTOR * widest).max(MIN_BOUND);
        Some(guard)
    }

    /// How far a volume's features lie from the calibration volumes': the largest of the features'
    /// distances to their mean, in standard deviations.
    pub fn distance(&self, features: &[f64]) -> f64 {
        features.iter().zip(self.mean.iter().zip(&self.std)).map(|(f, (m, s))| ((f - m) / s).abs()).fold(0.0, f64::max)
    }

    /// Whether a volume with these features is beyond the bound.
    pub fn trips(&self, features: &[f64]) -> bool {
        self.distance(features) > self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_volumes_pass_and_a_shifted_volume_trips() {
        let volumes: Vec<Vec<f32>> = (0..6)
            .map(|i| (0..1000).map(|j| ((j * 7 + i * 13) % 100) as f32 / 100.0 + i as f32 * 0.01).collect())
            .collect();
        let per_volume: Vec<Vec<f64>> = volumes.iter().map(|v| features(v)).collect();
        let guard = Guard::calibrate(&per_volume).expect("volumes");
        assert!(per_volume.iter().all(|f| !guard.trips(f)));
        let shifted: Vec<f32> = volumes[0].iter().map(|v| v * 5.0 + 3.0).collect();
        assert!(guard.trips(&features(&shifted)), "distance {}", guard.distance(&features(&shifted)));
        assert_eq!(Guard::calibrate(&[]), None);
    }

    #[test]
    fn features_are_the_mean_spread_and_quantiles() {
        let v: Vec<f32> = (0..=100).map(|i| i as f32).collect();
        let f = features(&v);
        assert_eq!((f[0], f[4]), (50.0, 50.0));
        assert_eq!((f[2], f[6]), (5.0, 95.0));
        assert!((f[1] - (850.0f64).sqrt()).abs() < 1e-9);
    }
}
