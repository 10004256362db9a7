//! Knowing when to trust a path, in the study: whether small decision margins (a keep probability near
//! the threshold) go with large Dice losses, and what the runtime's guard (`--guard`) would have done on
//! the test volumes — the worst volume's loss and the mean FLOPs with and without it.

use std::path::Path;

use autopath_bundle::guard::{features, Guard};
use serde::{Deserialize, Serialize};

use super::results::Results;
use crate::error::Result;
use crate::input::preprocess::{resample_linear, Preprocessing};
use crate::study::dataset::Case;

/// The trust analysis of one evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Trust {
    /// The guard's bound, calibrated on the segmenter run's validation and training volumes as
    /// `compile` does (None without those volumes).
    pub guard_bound: Option<f64>,
    /// Each test volume's distance from the calibration volumes, in the order of [`Results::volumes`].
    pub guard_distance: Vec<f64>,
    /// Per policy, in the order of [`Results::policies`].
    pub policies: Vec<PolicyTrust>,
}

/// One policy's margins, losses and guard figures over the test volumes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyTrust {
    /// The keep threshold.
    pub threshold: f32,
    /// Per volume, the smallest distance of a keep probability to the threshold.
    pub margins: Vec<f64>,
    /// Per volume, the full network's Dice minus the path's.
    pub losses: Vec<f64>,
    /// Spearman's rank correlation of margin and loss (negative: small margins, large losses); None
    /// for fewer than 3 volumes or a constant side.
    pub rank_correlation: Option<f64>,
    /// The largest loss of any volume, without and with the guard.
    pub worst_loss: f64,
    /// With the guard: volumes beyond its bound take the full network (no loss, all FLOPs).
    pub worst_loss_guarded: f64,
    /// Mean FLOP fraction without and with the guard.
    pub mean_flop_fraction: f64,
    /// Mean FLOP fraction with the guard.
    pub mean_flop_fraction_guarded: f64,
    /// Test volumes the guard sent to the full network.
    pub tripped: usize,
}

/// The policy input's features of each case (the preprocessed volume resampled to `input`).
pub fn case_features(cases: &[Case], preprocessing: &Preprocessing, input: [usize; 3]) -> Result<Vec<Vec<f64>>> {
    cases
        .iter()
        .map(|c| {
            let s = crate::study::train::data::load_sample(c, preprocessing)?;
            Ok(features(resample_linear(&s.image, input).as_slice().unwrap_or_default()))
        })
        .collect()
}

/// The analysis of `results`, for policies with these thresholds, the guard calibrated on
/// `calibration` features and the test volumes' `test` features.
pub fn analyse(results: &Results, thresholds: &[f32], calibration: &[Vec<f64>], test: &[Vec<f64>]) -> Trust {
    let guard = Guard::calibrate(calibration);
    let guard_distance: Vec<f64> = test.iter().map(|f| guard.as_ref().map_or(0.0, |g| g.distance(f))).collect();
    let tripped: Vec<bool> = guard_distance.iter().map(|&d| guard.as_ref().is_some_and(|g| d > g.bound)).collect();
    let policies = thresholds
        .iter()
        .enumerate()
        .map(|(i, &threshold)| {
            let paths: Vec<_> = results.volumes.iter().map(|v| (&v.autopath[i], v.full)).collect();
            let margins: Vec<f64> = paths
                .iter()
                .map(|(p, _)| {
                    p.probabilities.iter().map(|&q| (q - threshold).abs() as f64).fold(f64::INFINITY, f64::min)
                })
                .collect();
            let losses: Vec<f64> = paths.iter().map(|(p, full)| full - p.dice).collect();
            let guarded = |j: usize| tripped.get(j).copied().unwrap_or(false);
            let n = paths.len().max(1) as f64;
            PolicyTrust {
                threshold,
                rank_correlation: spearman(&margins, &losses),
                worst_loss: losses.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                worst_loss_guarded: losses
                    .iter()
                    .enumerate()
                    .map(|(j, &l)| if guarded(j) { 0.0 } else { l })
                    .fold(f64::NEG_INFINITY, f64::max),
                mean_flop_fraction: paths.iter().map(|(p, _)| p.flop_fraction).sum::<f64>() / n,
                mean_flop_fraction_guarded: paths
                    .iter()
                    .enumerate()
                    .map(|(j, (p, _))| if guarded(j) { 1.0 } else { p.flop_fraction })
                    .sum::<f64>()
                    / n,
                tripped: tripped.iter().filter(|&&t| t).count(),
                margins,
                losses,
            }
        })
        .collect();
    Trust { guard_bound: guard.map(|g| g.bound), guard_distance, policies }
}

/// Ranks (1-based, ties averaged).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = rank;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation: Pearson's of the ranks. None for fewer than 3 pairs or a constant side.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (ra.iter().map(|x| (x - ma).powi(2)).sum(), rb.iter().map(|y| (y - mb).powi(2)).sum());
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The report's section and the margin-against-loss figure.
pub fn section(md: &mut String, dir: &Path, r: &Results, t: &Trust) -> Result<()> {
    use crate::study::figures::{line_chart, Series};
    use plotters::style::RGBColor;
    use std::fmt::Write;
    let colors = [RGBColor(214, 39, 40), RGBColor(31, 119, 180)];
    let series: Vec<Series> = t
        .policies
        .iter()
        .zip(&r.policies)
        .zip(colors.iter().cycle())
        .map(|((p, label), &color)| Series {
            label: label.clone(),
            points: p.margins.iter().copied().zip(p.losses.iter().copied()).collect(),
            color,
            band: None,
            markers_only: true,
        })
        .collect();
    let lo = t.policies.iter().flat_map(|p| p.losses.iter().copied()).fold(0.0, f64::min);
    let hi = t.policies.iter().flat_map(|p| p.losses.iter().copied()).fold(0.0, f64::max);
    if series.iter().any(|s| !s.points.is_empty()) {
        let pad = 0.05 * (hi - lo).max(0.01);
        let title = "Decision margin against Dice loss per test volume";
        line_chart(
            dir,
            "margin_vs_loss",
            title,
            "smallest |p - threshold|",
            "full Dice - path Dice",
            &series,
            (lo - pad, hi + pad),
        )?;
    }
    let bound = t.guard_bound.map_or("none (no calibration volumes)".into(), |b| format!("{b:.2}"));
    let _ = writeln!(md, "\n## When to trust a path\n\nGuard bound {bound} (standard deviations of the policy input's features over the run's validation and training volumes); test volumes' distances {}.\n", t.guard_distance.iter().map(|d| format!("{d:.2}")).collect::<Vec<_>>().join(", "));
    let _ = writeln!(md, "| policy | rank correlation (margin, loss) | worst loss | worst loss, guard | mean FLOPs | mean FLOPs, guard | volumes guarded |\n|---|---:|---:|---:|---:|---:|---:|");
    for (p, label) in t.policies.iter().zip(&r.policies) {
        let rho = p.rank_correlation.map_or("n/a".into(), |c| format!("{c:.2}"));
        let _ = writeln!(
            md,
            "| {label} | {rho} | {:.4} | {:.4} | {:.1} % | {:.1} % | {} |",
            p.worst_loss,
            p.worst_loss_guarded,
            100.0 * p.mean_flop_fraction,
            100.0 * p.mean_flop_fraction_guarded,
            p.tripped
        );
    }
    let _ = writeln!(md, "\n![margin against loss](margin_vs_loss.png)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed_pairs() {
        let a = [0.1, 0.5, 0.2, 0.9];
        assert_eq!(spearman(&a, &[1.0, 5.0, 2.0, 100.0]), Some(1.0));
        assert_eq!(spearman(&a, &[-1.0, -5.0, -2.0, -100.0]), Some(-1.0));
        assert_eq!(spearman(&a, &[1.0, 1.0, 1.0, 1.0]), None);
        // Ties take the mean rank: scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138.
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).expect("not constant");
        assert!((rho - 0.948_683_298_050_513_8).abs() < 1e-12, "{rho}");
    }
}
