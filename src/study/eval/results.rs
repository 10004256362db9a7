//! The study's results: per-volume paths and Dice, the strategies' summaries, Table 1 and the
//! Pareto curves, assembled from what the run measured.

use serde::Serialize;

/// Mean, spread and range of a set of values.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Stats {
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stats {
    fn of(v: &[f64]) -> Stats {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        Stats {
            mean,
            std,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One policy's path on one test volume.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PolicyPath {
    /// Keep mask at the policy's threshold, e.g. `11011100`.
    pub mask: String,
    /// Dice.
    pub dice: f64,
    /// Blocks dropped.
    pub dropped: usize,
    /// FLOPs relative to the full network.
    pub flop_fraction: f64,
    /// The policy's keep probabilities.
    pub probabilities: Vec<f32>,
    /// The same volume at each threshold of [`SWEEP`]: `(FLOP fraction, Dice)`, for the Pareto figure.
    pub sweep: Vec<(f64, f64)>,
}

/// An oracle's path on one test volume.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OraclePath {
    /// Keep mask.
    pub mask: String,
    /// Dice.
    pub dice: f64,
    /// Blocks dropped.
    pub dropped: usize,
    /// FLOPs relative to the full network.
    pub flop_fraction: f64,
}

/// Per test volume.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VolumeResult {
    /// Case id.
    pub id: String,
    /// Full-backbone Dice.
    pub full: f64,
    /// Dice with only block n dropped.
    pub drop_n: Vec<f64>,
    /// Dice dropping blocks 1..n, n = 1..N−1.
    pub drop_first: Vec<f64>,
    /// Dice dropping the last n blocks, n = 1..N−1.
    pub drop_last: Vec<f64>,
    /// Each evaluated policy's path, in the order of [`Results::policies`].
    pub autopath: Vec<PolicyPath>,
    /// The path with the highest reward (the paper's, with [`Summary::oracle_tau`]): what a perfect
    /// policy for that reward would pick.
    pub oracle: OraclePath,
    /// The cheapest path within [`Summary::dice_tolerance`] of the full network's Dice on this volume.
    pub tolerance_oracle: OraclePath,
    /// The tolerance oracle at each tolerance of [`ORACLE_TOLERANCES`], for the Pareto figure.
    pub oracle_sweep: Vec<(f64, f64)>,
}

/// One row of Table 1.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TableRow {
    /// Strategy.
    pub strategy: String,
    /// Fraction of blocks dropped.
    pub drop_ratio: f64,
    /// FLOPs relative to the full network.
    pub flop_fraction: f64,
    /// Mean Dice over test volumes.
    pub dice: f64,
    /// Spread (DropRandomN: over repeats).
    pub dice_std: Option<f64>,
}

/// The headline numbers of one path strategy over the test volumes.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StrategySummary {
    /// Strategy.
    pub label: String,
    /// Mean Dice.
    pub dice: f64,
    /// Full-network Dice minus this.
    pub dice_drop: f64,
    /// Mean fraction of blocks dropped.
    pub drop_ratio: f64,
    /// Mean blocks dropped.
    pub blocks_dropped_mean: f64,
    /// Mean FLOP fraction.
    pub flop_fraction: f64,
    /// Distinct paths over the test volumes.
    pub distinct_paths: usize,
}

/// The headline numbers of a study.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    /// Mean Dice of the full network.
    pub full_dice: f64,
    /// Test volumes.
    pub test_volumes: usize,
    /// Each policy, in the order of [`Results::policies`].
    pub autopath: Vec<StrategySummary>,
    /// The reward oracle.
    pub oracle: StrategySummary,
    /// The tolerance oracle.
    pub tolerance_oracle: StrategySummary,
    /// How the oracles searched: every path, or a beam search.
    pub oracle_search: String,
    /// τ of the reward oracle (the first paper-method policy's, else 50).
    pub oracle_tau: f64,
    /// Dice tolerance of the tolerance oracle (the first distilled policy's, else the default).
    pub dice_tolerance: f64,
    /// Whether the first policy's threshold sweep lies above DropRandomN's curve at every FLOP
    /// fraction both cover.
    pub above_random_at_every_budget: Option<bool>,
}

/// `results.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Results {
    /// Number of blocks N.
    pub blocks: usize,
    /// Test case ids.
    pub test_ids: Vec<String>,
    /// Random masks per level.
    pub random_repeats: usize,
    /// Row labels of the evaluated policies (`AutoPath (distil)`, `AutoPath (paper RL)`).
    pub policies: Vec<String>,
    /// Per volume.
    pub volumes: Vec<VolumeResult>,
    /// DropN mean Dice per n (Fig. 3).
    pub drop_n: Vec<f64>,
    /// DropFirstN mean Dice, n = 1..N−1 (Fig. 4).
    pub drop_first: Vec<f64>,
    /// DropLastN mean Dice, n = 1..N−1 (Fig. 5).
    pub drop_last: Vec<f64>,
    /// DropRandomN: per n = 1..N−1, statistics over repeats of the mean Dice over volumes (Figs. 6, 7).
    pub drop_random: Vec<Stats>,
    /// DropRandomN: mean FLOP fraction per n = 1..N−1.
    pub drop_random_flops: Vec<f64>,
    /// DropFirstN and DropLastN FLOP fractions per n = 1..N−1.
    pub drop_first_flops: Vec<f64>,
    /// DropLastN FLOP fractions per n = 1..N−1.
    pub drop_last_flops: Vec<f64>,
    /// Table 1.
    pub table1: Vec<TableRow>,
    /// Headline numbers.
    pub summary: Summary,
    /// Decision margins against Dice losses, and the guard on the test volumes (absent in results
    /// made before it was measured).
    #[serde(default)]
    pub trust: Option<super::trust::Trust>,
    /// The Pareto curves against measured time (`eval --cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_time: Option<super::timed::TimeCurves>,
}

/// The per-volume results and curves that [`assemble`] turns into Table 1 and the summary.
pub(super) struct Assembly {
    pub(super) blocks: usize,
    pub(super) test_ids: Vec<String>,
    pub(super) repeats: usize,
    pub(super) labels: Vec<String>,
    pub(super) volumes: Vec<VolumeResult>,
    pub(super) random_dice: Vec<Vec<Vec<f64>>>,
    pub(super) random_flops: Vec<f64>,
    pub(super) first_flops: Vec<f64>,
    pub(super) last_flops: Vec<f64>,
    pub(super) oracle_search: String,
    pub(super) tau: f64,
    pub(super) delta: f64,
}

fn strategy(label: &str, full_dice: f64, n: usize, paths: &[(&str, f64, usize, f64)]) -> StrategySummary {
    let k = paths.len().max(1) as f64;
    let dice = paths.iter().map(|p| p.1).sum::<f64>() / k;
    let dropped = paths.iter().map(|p| p.2 as f64).sum::<f64>() / k;
    StrategySummary {
        label: label.to_string(),
        dice,
        dice_drop: full_dice - dice,
        drop_ratio: dropped / n as f64,
        blocks_dropped_mean: dropped,
        flop_fraction: paths.iter().map(|p| p.3).sum::<f64>() / k,
        distinct_paths: paths.iter().map(|p| p.0).collect::<std::collections::HashSet<_>>().len(),
    }
}

/// Mean of `(x, y)` curves over volumes, point by point.
fn mean_curve(curves: &[&[(f64, f64)]]) -> Vec<(f64, f64)> {
    let k = curves.len().max(1) as f64;
    let len = curves.iter().map(|c| c.len()).min().unwrap_or(0);
    (0..len)
        .map(|i| (curves.iter().map(|c| c[i].0).sum::<f64>() / k, curves.iter().map(|c| c[i].1).sum::<f64>() / k))
        .collect()
}

/// `y` of a piecewise-linear curve (any order of points) at `x`, if `x` lies within its range.
fn interpolate(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut c = curve.to_vec();
    c.sort_by(|a, b| a.0.total_cmp(&b.0));
    c.windows(2).find(|w| w[0].0 <= x && x <= w[1].0).map(|w| {
        if w[1].0 > w[0].0 {
            w[0].1 + (w[1].1 - w[0].1) * (x - w[0].0) / (w[1].0 - w[0].0)
        } else {
            w[0].1.max(w[1].1)
        }
    })
}

impl Results {
    /// A policy's mean Pareto sweep: `(FLOP fraction, Dice)` per threshold of [`SWEEP`].
    pub fn policy_curve(&self, i: usize) -> Vec<(f64, f64)> {
        mean_curve(&self.volumes.iter().map(|v| v.autopath[i].sweep.as_slice()).collect::<Vec<_>>())
    }

    /// The tolerance oracle's mean curve over [`ORACLE_TOLERANCES`].
    pub fn oracle_curve(&self) -> Vec<(f64, f64)> {
        mean_curve(&self.volumes.iter().map(|v| v.oracle_sweep.as_slice()).collect::<Vec<_>>())
    }

    /// DropRandomN's curve, the full network included.
    pub fn random_curve(&self) -> Vec<(f64, f64)> {
        let mut c = vec![(1.0, self.summary.full_dice)];
        c.extend(self.drop_random_flops.iter().zip(&self.drop_random).map(|(&f, s)| (f, s.mean)));
        c
    }
}

pub(super) fn assemble(a: Assembly) -> Results {
    let n = a.blocks;
    let nv = a.volumes.len() as f64;
    let mean = |f: &dyn Fn(&VolumeResult) -> f64| a.volumes.iter().map(f).sum::<f64>() / nv;
    let full_dice = mean(&|v| v.full);
    let drop_n: Vec<f64> = (0..n).map(|i| mean(&|v| v.drop_n[i])).collect();
    let drop_first: Vec<f64> = (0..n - 1).map(|i| mean(&|v| v.drop_first[i])).collect();
    let drop_last: Vec<f64> = (0..n - 1).map(|i| mean(&|v| v.drop_last[i])).collect();
    let drop_random: Vec<Stats> = a
        .random_dice
        .iter()
        .map(|reps| {
            Stats::of(&reps.iter().map(|vols| vols.iter().sum::<f64>() / vols.len() as f64).collect::<Vec<_>>())
        })
        .collect();
    let oracle_of = |label: &str, f: &dyn Fn(&VolumeResult) -> &OraclePath| {
        summarize_paths(label, full_dice, n, &a.volumes, &|v| {
            let o = f(v);
            (o.mask.as_str(), o.dice, o.dropped, o.flop_fraction)
        })
    };
    let oracle = oracle_of(&format!("Oracle (best reward, τ = {})", a.tau), &|v| &v.oracle);
    let tolerance_oracle =
        oracle_of(&format!("Oracle (cheapest within Dice −{})", a.delta), &|v| &v.tolerance_oracle);
    let autopath: Vec<StrategySummary> = a
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            summarize_paths(label, full_dice, n, &a.volumes, &|v| {
                let p = &v.autopath[i];
                (p.mask.as_str(), p.dice, p.dropped, p.flop_fraction)
            })
        })
        .collect();
    let heuristics = Heuristics {
        first: &drop_first,
        last: &drop_last,
        random: &drop_random,
        first_flops: &a.first_flops,
        last_flops: &a.last_flops,
        random_flops: &a.random_flops,
        repeats: a.repeats,
    };
    let table1 = table1(full_dice, n, &heuristics, &autopath, [&tolerance_oracle, &oracle]);
    let mut results = Results {
        blocks: n,
        test_ids: a.test_ids,
        random_repeats: a.repeats,
        policies: a.labels,
        volumes: a.volumes,
        drop_n,
        drop_first,
        drop_last,
        drop_random,
        drop_random_flops: a.random_flops,
        drop_first_flops: a.first_flops,
        drop_last_flops: a.last_flops,
        table1,
        summary: Summary {
            full_dice,
            test_volumes: nv as usize,
            autopath,
            oracle,
            tolerance_oracle,
            oracle_search: a.oracle_search,
            oracle_tau: a.tau,
            dice_tolerance: a.delta,
            above_random_at_every_budget: None,
        },
        trust: None,
        measured_time: None,
    };
    if !results.policies.is_empty() {
        let random = results.random_curve();
        let above = results.policy_curve(0).iter().all(|&(x, y)| interpolate(&random, x).is_none_or(|r| y >= r));
        results.summary.above_random_at_every_budget = Some(above);
    }
    results
}

/// One strategy's summary from the path `f` picks on each volume: `(mask, Dice, dropped, FLOP fraction)`.
fn summarize_paths(
    label: &str,
    full_dice: f64,
    n: usize,
    volumes: &[VolumeResult],
    f: &dyn Fn(&VolumeResult) -> (&str, f64, usize, f64),
) -> StrategySummary {
    let paths: Vec<(&str, f64, usize, f64)> = volumes.iter().map(f).collect();
    strategy(label, full_dice, n, &paths)
}

/// The heuristics' mean Dice and FLOP fraction per number of dropped blocks (index n − 1).
struct Heuristics<'a> {
    first: &'a [f64],
    last: &'a [f64],
    random: &'a [Stats],
    first_flops: &'a [f64],
    last_flops: &'a [f64],
    random_flops: &'a [f64],
    repeats: usize,
}

/// Table 1: the full network, the heuristics at each policy's mean dropping level, the policies and
/// the oracles.
fn table1(
    full_dice: f64,
    n: usize,
    h: &Heuristics,
    autopath: &[StrategySummary],
    oracles: [&StrategySummary; 2],
) -> Vec<TableRow> {
    let row = |strategy: String, drop_ratio: f64, flop_fraction: f64, dice: f64, dice_std: Option<f64>| TableRow {
        strategy,
        drop_ratio,
        flop_fraction,
        dice,
        dice_std,
    };
    let mut table = vec![row("Full backbone".into(), 0.0, 1.0, full_dice, None)];
    let mut levels: Vec<usize> =
        autopath.iter().map(|s| (s.blocks_dropped_mean.round() as usize).clamp(1, n - 1)).collect();
    levels.dedup();
    for &level in &levels {
        let (ratio, i) = (level as f64 / n as f64, level - 1);
        table.push(row(format!("DropFirstN (n = {level})"), ratio, h.first_flops[i], h.first[i], None));
        table.push(row(format!("DropLastN (n = {level})"), ratio, h.last_flops[i], h.last[i], None));
        let label = format!("DropRandomN (n = {level}, {} repeats)", h.repeats);
        table.push(row(label, ratio, h.random_flops[i], h.random[i].mean, Some(h.random[i].std)));
    }
    for s in autopath.iter().chain(oracles) {
        table.push(row(s.label.clone(), s.drop_ratio, s.flop_fraction, s.dice, None));
    }
    table
}
