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
