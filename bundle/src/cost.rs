//! The FLOP arithmetic of a path: what every path pays, what dropping a block saves, and the budget
//! calibration that maps keep thresholds to FLOP fractions. The one implementation of it: the models'
//! specification, the manifest and everything that reports a FLOP fraction go through [`PathCost`].

use serde::{Deserialize, Serialize};

use crate::error::{BundleError, Result};

/// Costs per tile of a network whose residual blocks can be dropped. FLOPs count multiply–adds as two
/// operations. A dropped block saves its residual branch; its projection shortcut runs either way.
pub trait PathCost {
    /// FLOPs of the stem and the head.
    fn stem_and_head_flops(&self) -> u64;

    /// Per block, in dropping order: (residual branch FLOPs, projection shortcut FLOPs).
    fn block_flops(&self) -> Vec<(u64, u64)>;

    /// FLOPs with every block kept.
    fn full_flops(&self) -> u64 {
        self.stem_and_head_flops() + self.block_flops().iter().map(|(b, s)| b + s).sum::<u64>()
    }

    /// FLOPs of a path (`keep[n]` true = block n runs; blocks past `keep`'s end count as kept).
    fn path_flops(&self, keep: &[bool]) -> u64 {
        let saved: u64 = self.block_flops().iter().zip(keep).filter(|(_, k)| !**k).map(|((b, _), _)| b).sum();
        self.full_flops() - saved
    }

    /// The FLOPs of a path as a fraction of the full network's.
    fn flop_fraction(&self, keep: &[bool]) -> f64 {
        self.path_flops(keep) as f64 / self.full_flops().max(1) as f64
    }
}

/// One point of the budget calibration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BudgetPoint {
    /// Keep threshold.
    pub threshold: f32,
    /// Mean FLOP fraction of the full network that the policy's paths spend at it.
    pub flop_fraction: f64,
}

impl BudgetPoint {
    /// The calibration curve of a policy from its keep probabilities on some volumes: one point at
    /// every threshold where a volume's path changes (each distinct probability, as `p ≥ t` keeps),
    /// plus 1.0; thresholds ascending, so FLOP fractions descending.
    pub fn curve(probabilities: &[Vec<f32>], cost: &impl PathCost) -> Vec<BudgetPoint> {
        if probabilities.is_empty() {
            return Vec::new();
        }
        let mut thresholds: Vec<f32> = probabilities.iter().flatten().copied().filter(|p| *p <= 1.0).collect();
        thresholds.push(0.0);
        thresholds.push(1.0);
        thresholds.sort_by(f32::total_cmp);
        thresholds.dedup();
        let mut curve: Vec<BudgetPoint> = thresholds
            .into_iter()
            .map(|t| {
                let spend = probabilities
                    .iter()
                    .map(|p| cost.flop_fraction(&p.iter().map(|&v| v >= t).collect::<Vec<_>>()))
                    .sum::<f64>();
                BudgetPoint { threshold: t, flop_fraction: spend / probabilities.len() as f64 }
            })
            .collect();
        // Only the lowest threshold of each spend matters (it keeps the most blocks for that spend).
        curve.dedup_by(|later, earlier| later.flop_fraction == earlier.flop_fraction);
        curve
    }

    /// The lowest keep threshold of `curve` whose mean FLOP fraction is within `budget`.
    pub fn threshold_for(curve: &[BudgetPoint], budget: f64) -> Result<f32> {
        if !(budget > 0.0 && budget <= 1.0) {
            return Err(BundleError::request("budget", format!("{budget} is not a FLOP fraction in (0, 1]")));
        }
        let Some(last) = curve.last() else {
            return Err(BundleError::request(
                "budget",
                "this bundle has no budget calibration (compiled without the segmenter's data); use --threshold",
            ));
        };
        curve.iter().find(|p| p.flop_fraction <= budget).map(|p| p.threshold).ok_or_else(|| {
            BundleError::request(
                "budget",
                format!(
                    "{budget} is below the cheapest calibrated spend of this policy ({:.3} of the full FLOPs)",
                    last.flop_fraction
                ),
            )
        })
    }
}

/// One block's measured time per call.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BlockTime {
    /// The block's graph (branch and shortcut), milliseconds.
    pub kept_ms: f64,
    /// Its projection shortcut alone (what a dropped block still runs), milliseconds; 0 without one.
    pub shortcut_ms: f64,
}

/// The measured time of a bundle's graphs per call of `tile_batch` tiles on one execution provider
/// (`autopath bench --calibrate`): a cost in the terms a user's clock counts, beside the FLOPs. As a
/// [`PathCost`] it counts nanoseconds where FLOPs count operations, so budgets and fractions work alike.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeasuredCost {
    /// Where it was measured: the provider (`cpu`, `cuda`, …) and the device, as `bench` names them.
    pub provider: String,
    /// The processor or GPU.
    pub device: String,
    /// Tiles per call.
    pub tile_batch: usize,
    /// The stem, milliseconds.
    pub stem_ms: f64,
    /// The head, milliseconds.
    pub head_ms: f64,
    /// Per block, in order.
    pub blocks: Vec<BlockTime>,
    /// `full.onnx`, milliseconds: what the chain's graphs add up to, run as one graph.
    pub full_ms: f64,
}

fn nanos(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6).round() as u64
}

impl PathCost for MeasuredCost {
    fn stem_and_head_flops(&self) -> u64 {
        nanos(self.stem_ms) + nanos(self.head_ms)
    }

    /// (the branch's share: the kept block less its shortcut, the shortcut).
    fn block_flops(&self) -> Vec<(u64, u64)> {
        self.blocks.iter().map(|b| (nanos(b.kept_ms - b.shortcut_ms), nanos(b.shortcut_ms))).collect()
    }
}

impl MeasuredCost {
    /// The checks a hand-edited table must pass: one entry per block, finite non-negative times, a
    /// positive total.
    pub fn validate(&self, blocks: usize) -> std::result::Result<(), String> {
        if self.blocks.len() != blocks {
            return Err(format!("{} block times for a network of {blocks} blocks", self.blocks.len()));
        }
        let times = [self.stem_ms, self.head_ms, self.full_ms]
            .into_iter()
            .chain(self.blocks.iter().flat_map(|b| [b.kept_ms, b.shortcut_ms]));
        if times.clone().any(|t| !t.is_finite() || t < 0.0) {
            return Err("a time is negative or not finite".into());
        }
        if self.full_flops() == 0 {
            return Err("the times add up to zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Toy;
    impl PathCost for Toy {
        fn stem_and_head_flops(&self) -> u64 {
            20
        }
        fn block_flops(&self) -> Vec<(u64, u64)> {
            vec![(30, 10), (40, 0)]
        }
    }

    #[test]
    fn a_dropped_block_saves_its_branch_and_keeps_its_shortcut() {
        assert_eq!(Toy.full_flops(), 100);
        assert_eq!(Toy.path_flops(&[false, true]), 70);
        assert_eq!(Toy.path_flops(&[false, false]), 30);
        assert!((Toy.flop_fraction(&[true, false]) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn measured_times_count_like_flops() {
        let m = MeasuredCost {
            provider: "cpu".into(),
            device: "test".into(),
            tile_batch: 2,
            stem_ms: 1.0,
            head_ms: 1.0,
            blocks: vec![BlockTime { kept_ms: 4.0, shortcut_ms: 1.0 }, BlockTime { kept_ms: 3.0, shortcut_ms: 0.0 }],
            full_ms: 9.5,
        };
        assert_eq!(m.full_flops(), 9_000_000);
        assert!((m.flop_fraction(&[false, true]) - 6.0 / 9.0).abs() < 1e-12);
        assert!(m.validate(2).is_ok());
        assert!(m.validate(3).expect_err("a short table").contains("2 block times for a network of 3 blocks"));
    }

    #[test]
    fn the_budget_takes_the_lowest_threshold_within_it() {
        // Thresholds 0 and 0.2 keep both blocks (1.0), 0.9 drops block 1 (0.6), 1.0 drops both (0.3).
        let curve = BudgetPoint::curve(&[vec![0.9, 0.2]], &Toy);
        let points: Vec<(f32, f64)> = curve.iter().map(|p| (p.threshold, p.flop_fraction)).collect();
        assert_eq!(points, vec![(0.0, 1.0), (0.9, 0.6), (1.0, 0.3)]);
        assert_eq!(BudgetPoint::threshold_for(&curve, 0.65).ok(), Some(0.9));
        assert!(BudgetPoint::threshold_for(&curve, 0.1).is_err());
        assert!(BudgetPoint::threshold_for(&curve, 1.5).is_err());
    }
}
