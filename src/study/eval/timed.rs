//! The study's Pareto curves against measured time (`eval --cost cost.json`): the same paths and Dice
//! as the FLOP curves, each path's cost read from a table of the graphs' times on a provider
//! (`autopath bench --calibrate`) instead of its FLOPs. On a GPU the stem and the head take a larger
//! share of the time than of the FLOPs, so a path's time fraction lies above its FLOP fraction.

use autopath_bundle::{MeasuredCost, PathCost};
use serde::{Deserialize, Serialize};

use super::{heuristic_masks, Results, SWEEP};

/// Dice against the fraction of the full network's measured time, per strategy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimeCurves {
    /// Provider the times were measured on.
    pub provider: String,
    /// Its device.
    pub device: String,
    /// DropRandomN: `(mean time fraction of the level's random paths, mean Dice)`, the full network first.
    pub random: Vec<(f64, f64)>,
    /// DropFirstN, the full network first.
    pub first: Vec<(f64, f64)>,
    /// DropLastN, the full network first.
    pub last: Vec<(f64, f64)>,
    /// Each policy's threshold sweep ([`SWEEP`]), averaged over the test volumes.
    pub policies: Vec<Vec<(f64, f64)>>,
    /// Each policy at its threshold: mean time fraction over the test volumes.
    pub chosen: Vec<f64>,
}

fn mask(text: &str) -> Vec<bool> {
    text.chars().map(|c| c == '1').collect()
}

/// The curves of `r` with path costs from `cost`; `random` are the study's DropRandomN masks,
/// `[level][repeat]`.
pub fn curves(r: &Results, cost: &MeasuredCost, random: &[Vec<Vec<bool>>]) -> TimeCurves {
    let time = |m: &[bool]| cost.flop_fraction(m);
    let full = (1.0, r.summary.full_dice);
    let (_, first, last) = heuristic_masks(r.blocks);
    let with_full = |masks: &[Vec<bool>], dice: &[f64]| {
        std::iter::once(full).chain(masks.iter().zip(dice).map(|(m, &d)| (time(m), d))).collect::<Vec<_>>()
    };
    let random_curve =
        std::iter::once(full)
            .chain(random.iter().zip(&r.drop_random).map(|(level, stats)| {
                (level.iter().map(|m| time(m)).sum::<f64>() / level.len().max(1) as f64, stats.mean)
            }))
            .collect();
    let volumes = r.volumes.len().max(1) as f64;
    let policies = (0..r.policies.len())
        .map(|i| {
            SWEEP
                .iter()
                .enumerate()
                .map(|(j, &t)| {
                    let (mut x, mut y) = (0.0, 0.0);
                    for v in &r.volumes {
                        let p = &v.autopath[i];
                        let keep: Vec<bool> = p.probabilities.iter().map(|&q| q >= t).collect();
                        x += time(&keep);
                        y += p.sweep.get(j).map_or(0.0, |s| s.1);
                    }
                    (x / volumes, y / volumes)
                })
                .collect()
        })
        .collect();
    let chosen = (0..r.policies.len())
        .map(|i| r.volumes.iter().map(|v| time(&mask(&v.autopath[i].mask))).sum::<f64>() / volumes)
        .collect();
    TimeCurves {
        provider: cost.provider.clone(),
        device: cost.device.clone(),
        random: random_curve,
        first: with_full(&first, &r.drop_first),
        last: with_full(&last, &r.drop_last),
        policies,
        chosen,
    }
}
