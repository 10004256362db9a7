//! `autopath eval`: the paper's study on the test split, on whole volumes — full backbone, DropN,
//! DropFirstN, DropLastN, DropRandomN and AutoPath — with Table 1, Figures 3–8 and qualitative overlays.

use autopath_bundle::PathCost;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::input::volume::{read_volume, ReadOptions};
use crate::study::dataset::Dataset;
use crate::study::figures::{histogram, line_chart, overlay_png, Series, AUTOPATH, FULL, TRUTH};
use crate::study::path_eval::{self, PathEvaluator, Prepared};
use crate::study::search::{search, Objective, PathTable, Scored, BEAM_WIDTH, EXHAUSTIVE_MAX_BLOCKS};
use crate::study::train::data::{load_sample, Sample};
use crate::study::train::infer::keep_probabilities;
use crate::study::train::policy::{load_policy, Method, DICE_TOLERANCE};
use crate::study::train::segment::{cases_by_id, load_segmenter};
use autopath_bundle::{Architecture, Bundle};
use plotters::style::RGBColor;

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Segmenter run.
    pub seg: PathBuf,
    /// Policy runs, one AutoPath row each (labelled by their method).
    pub policies: Vec<PathBuf>,
    /// Report folder.
    pub out: PathBuf,
    /// Random masks per dropping level (default 100 for N ≤ 8, else 500).
    pub random_repeats: Option<usize>,
    /// Seed of the random masks.
    pub seed: u64,
    /// Tiles per ORT call.
    pub tile_batch: usize,
    /// Session sets of the path evaluator (None: [`PathEvaluator::open`]'s choice).
    pub workers: Option<usize>,
    /// How ONNX Runtime runs the segmenter's graphs (the policies run in Candle on the CPU).
    pub session: crate::deploy::SessionOptions,
}

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
}

/// Keep thresholds of the Pareto sweep of each policy.
pub const SWEEP: [f32; 13] = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// Dice tolerances of the oracle's Pareto sweep.
pub const ORACLE_TOLERANCES: [f64; 7] = [0.0, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1];

fn err(e: impl std::fmt::Display) -> Error {
    Error::invalid("eval", e.to_string())
}

use crate::labels::mask_text;

/// A loaded policy with its row label.
struct Policy {
    label: String,
    net: autopath_models::policy::PolicyNet,
    threshold: f32,
}

fn load_policies(runs: &[PathBuf], blocks: usize) -> Result<(Vec<Policy>, f64, f64)> {
    let mut policies = Vec::new();
    let (mut tau, mut delta) = (None, None);
    for run in runs {
        let (net, pc, meta) = load_policy(run, "best")?;
        if net.num_blocks() != blocks {
            return Err(err(format!(
                "policy {} decides on {} blocks; the segmenter has {blocks} (a policy of another segmenter run?)",
                run.display(),
                net.num_blocks()
            )));
        }
        let label = match pc.method {
            Method::Paper => {
                tau.get_or_insert(pc.tau);
                "AutoPath (paper RL)"
            }
            Method::Distil => {
                delta.get_or_insert(pc.dice_tolerance);
                "AutoPath (distil)"
            }
        };
        let same = policies.iter().filter(|p: &&Policy| p.label.starts_with(label)).count();
        let label = if same == 0 { label.to_string() } else { format!("{label} #{}", same + 1) };
        policies.push(Policy { label, net, threshold: meta.deployed_threshold(&pc) });
    }
    Ok((policies, tau.unwrap_or(50.0), delta.unwrap_or(DICE_TOLERANCE)))
}

/// Keep masks, one per row.
type Masks = Vec<Vec<bool>>;

/// The heuristic masks of the paper's study for N blocks: DropN, DropFirstN, DropLastN.
fn heuristic_masks(n: usize) -> (Masks, Masks, Masks) {
    let drop_n = (0..n).map(|b| (0..n).map(|i| i != b).collect()).collect();
    let first = (1..n).map(|k| (0..n).map(|i| i >= k).collect()).collect();
    let last = (1..n).map(|k| (0..n).map(|i| i < n - k).collect()).collect();
    (drop_n, first, last)
}

/// Random masks shared by all volumes: one repeat = one mask applied to the whole test set.
fn random_masks(n: usize, repeats: usize, seed: u64) -> Vec<Vec<Vec<bool>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (1..n)
        .map(|k| {
            (0..repeats)
                .map(|_| {
                    let mut m = vec![true; n];
                    for i in sample(&mut rng, n, k) {
                        m[i] = false;
                    }
                    m
                })
                .collect()
        })
        .collect()
}

fn oracle_path(s: &Scored) -> OraclePath {
    OraclePath {
        mask: mask_text(&s.mask),
        dice: s.dice,
        dropped: s.mask.iter().filter(|&&k| !k).count(),
        flop_fraction: s.flop_fraction,
    }
}

/// A volume's policy outputs: per policy, the keep probabilities, the masks across [`SWEEP`] and the
/// mask at its threshold.
struct PolicyMasks {
    probabilities: Vec<Vec<f32>>,
    sweeps: Vec<Vec<Vec<bool>>>,
    chosen: Vec<Vec<bool>>,
}

/// DropRandomN's Dice, `[n][repeat][volume]`.
type RandomDice = Vec<Vec<Vec<f64>>>;

/// Everything one volume needs: the oracles' search, then every other mask of the study scored in one
/// pass of the path evaluator (shared prefixes).
struct VolumeStudy<'a> {
    arch: &'a Architecture,
    random: &'a [Vec<Vec<bool>>],
    policies: &'a [Policy],
    tau: f64,
    delta: f64,
    policy_input: [usize; 3],
}

impl VolumeStudy<'_> {
    fn run(
        &self,
        ev: &mut PathEvaluator,
        id: &str,
        s: &Sample,
        random_dice: &mut [Vec<Vec<f64>>],
    ) -> Result<VolumeResult> {
        let n = self.arch.blocks.len();
        let prepared = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone()))?;
        let tolerance = Objective::DiceTolerance { delta: self.delta };
        let mut table = self.oracle_table(ev, &prepared)?;
        let (drop_n, first, last) = heuristic_masks(n);
        let PolicyMasks { probabilities, sweeps, chosen } = self.policy_masks(s)?;
        let wanted = drop_n
            .iter()
            .chain(&first)
            .chain(&last)
            .chain(self.random.iter().flatten())
            .chain(&chosen)
            .chain(sweeps.iter().flatten());
        table.score_missing(ev, &prepared, self.arch, wanted)?;
        let lookup: HashMap<&[bool], &Scored> = table.paths.iter().map(|p| (p.mask.as_slice(), p)).collect();
        let dice = |m: &Vec<bool>| lookup[m.as_slice()].dice;
        for (level, masks) in self.random.iter().enumerate() {
            for (r, m) in masks.iter().enumerate() {
                random_dice[level][r].push(dice(m));
            }
        }
        let autopath = self
            .policies
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let m = &chosen[i];
                PolicyPath {
                    mask: mask_text(m),
                    dice: dice(m),
                    dropped: m.iter().filter(|&&k| !k).count(),
                    flop_fraction: lookup[m.as_slice()].flop_fraction,
                    probabilities: probabilities[i].clone(),
                    sweep: sweeps[i].iter().map(|m| (lookup[m.as_slice()].flop_fraction, dice(m))).collect(),
                }
            })
            .collect();
        let oracle_sweep = ORACLE_TOLERANCES
            .iter()
            .map(|&d| {
                let b = table.best(Objective::DiceTolerance { delta: d });
                (b.flop_fraction, b.dice)
            })
            .collect();
        Ok(VolumeResult {
            id: id.to_string(),
            full: table.full_dice,
            drop_n: drop_n.iter().map(dice).collect(),
            drop_first: first.iter().map(dice).collect(),
            drop_last: last.iter().map(dice).collect(),
            autopath,
            oracle: oracle_path(table.best(Objective::Reward { tau: self.tau })),
            tolerance_oracle: oracle_path(table.best(tolerance)),
            oracle_sweep,
        })
    }

    /// Every test volume, the volumes spread over the evaluator's session sets: their results in
    /// order, and DropRandomN's Dice as `[n][repeat][volume]`.
    fn run_all(
        &self,
        ev: &mut PathEvaluator,
        cases: &[crate::study::dataset::Case],
        prep: &crate::input::preprocess::Preprocessing,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(Vec<VolumeResult>, RandomDice)> {
        let levels = self.arch.blocks.len() - 1;
        let repeats = self.random.first().map_or(0, Vec::len);
        progress(0, cases.len());
        let done = std::sync::atomic::AtomicUsize::new(0);
        let per_volume = ev.per_volume(cases.iter().collect(), |ev, case| {
            let s = load_sample(case, prep)?;
            let mut dice = vec![vec![Vec::new(); repeats]; levels];
            let r = self.run(ev, &case.id, &s, &mut dice)?;
            progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, cases.len());
            Ok((r, dice))
        })?;
        let mut volumes = Vec::with_capacity(cases.len());
        let mut random_dice: RandomDice = vec![vec![Vec::new(); repeats]; levels];
        for (r, dice) in per_volume {
            volumes.push(r);
            for (all, this) in random_dice.iter_mut().flatten().zip(dice.into_iter().flatten()) {
                all.extend(this);
            }
        }
        Ok((volumes, random_dice))
    }

    /// The oracles' search on one volume: exhaustive up to [`crate::study::search`]'s limit, else a beam per
    /// objective whose paths share one table.
    fn oracle_table(&self, ev: &mut PathEvaluator, prepared: &Prepared) -> Result<PathTable> {
        let mut table = search(ev, prepared, self.arch, Objective::DiceTolerance { delta: self.delta })?;
        if !table.exhaustive {
            let more = search(ev, prepared, self.arch, Objective::Reward { tau: self.tau })?;
            let new: Vec<Scored> = more.paths.into_iter().filter(|p| table.get(&p.mask).is_none()).collect();
            table.paths.extend(new);
        }
        Ok(table)
    }

    /// Each policy's keep probabilities on the volume, its masks across [`SWEEP`] and at its threshold.
    fn policy_masks(&self, s: &Sample) -> Result<PolicyMasks> {
        let probabilities = self
            .policies
            .iter()
            .map(|p| keep_probabilities(&p.net, &s.image, self.policy_input))
            .collect::<Result<Vec<_>>>()?;
        let sweeps = probabilities
            .iter()
            .map(|pr| SWEEP.iter().map(|&t| pr.iter().map(|&v| v >= t).collect()).collect())
            .collect();
        let chosen = probabilities
            .iter()
            .zip(self.policies)
            .map(|(pr, p)| pr.iter().map(|&v| v >= p.threshold).collect())
            .collect();
        Ok(PolicyMasks { probabilities, sweeps, chosen })
    }
}

/// Runs the study and writes `report.md`, `results.json` and the figures into `opts.out`.
pub fn evaluate(opts: &EvalOptions, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<Results> {
    let (net, cfg) = load_segmenter(&opts.seg, "best")?;
    let n_blocks = cfg.spec.num_blocks();
    if n_blocks < 2 {
        return Err(err(format!("the segmenter has {n_blocks} block(s); the study needs at least 2")));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let seg_bundle = opts.out.join("segmenter");
    crate::study::compile::compile(
        &net,
        &cfg,
        None,
        None,
        &seg_bundle,
        crate::study::compile::CompileOptions::for_provider(opts.session.ep),
    )?;
    let bundle = Bundle::load(&seg_bundle)?;
    let arch = bundle.manifest.architecture.clone();
    let workers = opts.workers.unwrap_or_else(path_eval::default_workers);
    let mut ev = PathEvaluator::with_workers(&bundle, cfg.window, opts.tile_batch, workers, &opts.session)?;
    let (policies, tau, delta) = load_policies(&opts.policies, n_blocks)?;
    let repeats = opts.random_repeats.unwrap_or(if n_blocks <= 8 { 100 } else { 500 });
    let random = random_masks(n_blocks, repeats, opts.seed);

    let dataset = Dataset::open(&cfg.data, Some(cfg.layout))?;
    let cases = cases_by_id(&dataset, &cfg.test_ids)?;
    if cases.is_empty() {
        return Err(err("the segmenter run has no test cases"));
    }
    let study = VolumeStudy {
        arch: &arch,
        random: &random,
        policies: &policies,
        tau,
        delta,
        policy_input: cfg.spec.policy.input,
    };
    let (volumes, random_dice) = study.run_all(&mut ev, &cases, &cfg.preprocessing, progress)?;

    let flops = |m: &[bool]| arch.flop_fraction(m);
    let (_, first, last) = heuristic_masks(n_blocks);
    let oracle_search = if n_blocks <= EXHAUSTIVE_MAX_BLOCKS {
        format!("exhaustive ({} paths per volume)", 1usize << n_blocks)
    } else {
        format!("beam search (width {BEAM_WIDTH}; every path of a {n_blocks}-block network cannot be scored)")
    };
    let results = assemble(Assembly {
        blocks: n_blocks,
        test_ids: cfg.test_ids.clone(),
        repeats,
        labels: policies.iter().map(|p| p.label.clone()).collect(),
        volumes,
        random_dice,
        random_flops: random.iter().map(|l| l.iter().map(|m| flops(m)).sum::<f64>() / repeats as f64).collect(),
        first_flops: first.iter().map(|m| flops(m)).collect(),
        last_flops: last.iter().map(|m| flops(m)).collect(),
        oracle_search,
        tau,
        delta,
    });
    let overlays = overlays(&opts.out, &mut ev, &cases, &cfg.preprocessing, &results, policies.first())?;
    write_report(&opts.out, &results, &overlays)?;
    crate::study::train::checkpoint::write_json(&opts.out.join("results.json"), &results)?;
    Ok(results)
}

/// The per-volume results and curves that [`assemble`] turns into Table 1 and the summary.
struct Assembly {
    blocks: usize,
    test_ids: Vec<String>,
    repeats: usize,
    labels: Vec<String>,
    volumes: Vec<VolumeResult>,
    random_dice: Vec<Vec<Vec<f64>>>,
    random_flops: Vec<f64>,
    first_flops: Vec<f64>,
    last_flops: Vec<f64>,
    oracle_search: String,
    tau: f64,
    delta: f64,
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

fn assemble(a: Assembly) -> Results {
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

/// Qualitative overlays of the best, median and worst volumes of the first policy (by full Dice
/// without a policy).
fn overlays(
    out: &Path,
    ev: &mut PathEvaluator,
    cases: &[crate::study::dataset::Case],
    prep: &crate::input::preprocess::Preprocessing,
    results: &Results,
    policy: Option<&Policy>,
) -> Result<Vec<(String, f64, PathBuf, PathBuf)>> {
    let n_blocks = results.blocks;
    let mut ranked: Vec<usize> = (0..results.volumes.len()).collect();
    let score = |i: usize| results.volumes[i].autopath.first().map_or(results.volumes[i].full, |p| p.dice);
    ranked.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    let mut picks = vec![ranked[0], ranked[ranked.len() / 2], ranked[ranked.len() - 1]];
    picks.dedup();
    ev.per_volume(picks, |ev, i| {
        let case = &cases[i];
        let s = load_sample(case, prep)?;
        let ct = read_volume(&case.image, &ReadOptions::default())?;
        let prepared = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone()))?;
        let mut masks = vec![vec![true; n_blocks]];
        if policy.is_some() {
            if let Some(p) = results.volumes[i].autopath.first() {
                masks.push(p.mask.chars().map(|c| c == '1').collect());
            }
        }
        let preds = ev.evaluate(&prepared, &masks, true)?;
        let truth = s.labels.mapv(|l| u8::from(l > 0));
        let full_pred = preds[0].prediction.clone().unwrap_or_else(|| Array3::zeros(truth.dim()));
        let mut layers: Vec<(&Array3<u8>, [u8; 3])> = vec![(&truth, TRUTH), (&full_pred, FULL)];
        let auto_pred = preds.get(1).and_then(|p| p.prediction.clone());
        if let Some(a) = &auto_pred {
            layers.push((a, AUTOPATH));
        }
        let z = best_slice(&truth, 0);
        let y = best_slice(&truth, 1);
        let sp = ct.geometry.spacing;
        let axial = out.join(format!("overlay_case{}_axial.png", case.id));
        let coronal = out.join(format!("overlay_case{}_coronal.png", case.id));
        overlay_png(&axial, &ct.data, &layers, 0, z, 3, 1.0)?;
        overlay_png(&coronal, &ct.data, &layers, 1, y, 3, sp[2] / sp[0])?;
        Ok((case.id.clone(), score(i), axial, coronal))
    })
}

/// Index along `axis` with the most foreground.
fn best_slice(mask: &Array3<u8>, axis: usize) -> usize {
    mask.axis_iter(Axis(axis))
        .enumerate()
        .max_by_key(|(_, s)| s.iter().filter(|&&v| v > 0).count())
        .map_or(0, |(i, _)| i)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Dice against FLOP fraction: each policy across keep thresholds, DropRandomN, DropFirstN, DropLastN
/// and the tolerance oracle across tolerances.
fn pareto_figure(dir: &Path, r: &Results) -> Result<()> {
    let colours = [RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(227, 119, 194)];
    let line = |label: &str, points: Vec<(f64, f64)>, color: RGBColor, markers_only: bool| {
        let mut points = points;
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series { label: label.into(), points, color, band: None, markers_only }
    };
    let full = (1.0, r.summary.full_dice);
    let with_full = |v: Vec<(f64, f64)>| std::iter::once(full).chain(v).collect::<Vec<_>>();
    let mut series = vec![
        line("DropRandomN (mean)", r.random_curve(), RGBColor(31, 119, 180), false),
        line(
            "DropFirstN",
            with_full(r.drop_first_flops.iter().copied().zip(r.drop_first.iter().copied()).collect()),
            RGBColor(255, 127, 14),
            false,
        ),
        line(
            "DropLastN",
            with_full(r.drop_last_flops.iter().copied().zip(r.drop_last.iter().copied()).collect()),
            RGBColor(44, 160, 44),
            false,
        ),
        line("oracle (cheapest within a Dice tolerance)", r.oracle_curve(), RGBColor(120, 120, 120), false),
    ];
    for (i, label) in r.policies.iter().enumerate() {
        series.push(line(&format!("{label} (thresholds)"), r.policy_curve(i), colours[i % colours.len()], false));
    }
    // The region that matters: within 0.3 Dice of the full network (paths that drop almost everything
    // fall off the bottom).
    let bottom = (r.summary.full_dice - 0.3).max(0.0);
    line_chart(
        dir,
        "fig_pareto",
        "Dice against FLOPs",
        "FLOP fraction of the full network",
        "mean Dice",
        &series,
        (bottom, (r.summary.full_dice + 0.05).min(1.0)),
    )?;
    Ok(())
}

fn write_report(dir: &Path, r: &Results, overlays: &[(String, f64, PathBuf, PathBuf)]) -> Result<()> {
    heuristic_figures(dir, r)?;
    drop_random_figure(dir, r)?;
    let dropped: Vec<usize> = r.volumes.iter().filter_map(|v| v.autopath.first().map(|p| p.dropped)).collect();
    if !dropped.is_empty() {
        histogram(
            dir,
            "fig8_autopath_dropped",
            &format!("Fig. 8 - blocks dropped by {} per test volume", r.policies[0]),
            "blocks dropped",
            &dropped,
            r.blocks,
        )?;
    }
    pareto_figure(dir, r)?;
    let mut md = String::new();
    table1_section(&mut md, r);
    figures_section(&mut md, dir, overlays);
    per_volume_section(&mut md, r);
    heuristics_section(&mut md, r);
    crate::atomic::write_bytes_atomically(&dir.join("report.md"), md.as_bytes())
}

/// The full network's Dice as a flat reference line over `len` x positions from `from`.
fn full_line(r: &Results, len: usize, from: usize) -> Series {
    Series {
        label: "full backbone".into(),
        points: (from..from + len).map(|i| (i as f64, r.table1[0].dice)).collect(),
        color: RGBColor(120, 120, 120),
        band: None,
        markers_only: false,
    }
}

/// Lower y bound of a figure: 0.05 under its lowest value.
fn y_floor(v: &[f64]) -> f64 {
    (v.iter().copied().fold(1.0f64, f64::min) - 0.05).max(0.0)
}

/// A curve over n = 1, 2, … of per-n values.
fn over_n(label: &str, values: impl Iterator<Item = f64>, color: RGBColor, markers_only: bool) -> Series {
    Series {
        label: label.into(),
        points: values.enumerate().map(|(i, d)| ((i + 1) as f64, d)).collect(),
        color,
        band: None,
        markers_only,
    }
}

/// Figs. 3–5: DropN, DropFirstN and DropLastN against the full network.
fn heuristic_figures(dir: &Path, r: &Results) -> Result<()> {
    let n = r.blocks;
    for (file, title, label, values, color, len, markers) in [
        ("fig3_drop_n", "Fig. 3 - DropN: drop only block n", "DropN", &r.drop_n, RGBColor(31, 119, 180), n, true),
        (
            "fig4_drop_first",
            "Fig. 4 - DropFirstN: drop blocks 1..n",
            "DropFirstN",
            &r.drop_first,
            RGBColor(255, 127, 14),
            n - 1,
            false,
        ),
        (
            "fig5_drop_last",
            "Fig. 5 - DropLastN: drop the last n blocks",
            "DropLastN",
            &r.drop_last,
            RGBColor(44, 160, 44),
            n - 1,
            false,
        ),
    ] {
        let x_label = if markers { "block n" } else { "n" };
        let series = [over_n(label, values.iter().copied(), color, markers), full_line(r, len, 1)];
        line_chart(dir, file, title, x_label, "mean Dice", &series, (y_floor(values), 1.0))?;
    }
    Ok(())
}

/// Figs. 6–7: DropRandomN's mean with its ±std band, minimum and maximum.
fn drop_random_figure(dir: &Path, r: &Results) -> Result<()> {
    let mins: Vec<f64> = r.drop_random.iter().map(|s| s.min).collect();
    let mut mean = over_n("mean (±std)", r.drop_random.iter().map(|s| s.mean), RGBColor(214, 39, 40), false);
    mean.band = Some(r.drop_random.iter().map(|s| (s.mean - s.std, s.mean + s.std)).collect());
    let series = [
        mean,
        over_n("min", mins.iter().copied(), RGBColor(148, 103, 189), false),
        over_n("max", r.drop_random.iter().map(|s| s.max), RGBColor(140, 86, 75), false),
        full_line(r, r.blocks - 1, 1),
    ];
    let title = format!("Figs. 6-7 - DropRandomN ({} repeats): mean, ±std band, min, max", r.random_repeats);
    line_chart(dir, "fig6_drop_random", &title, "blocks dropped n", "mean Dice", &series, (y_floor(&mins), 1.0))?;
    Ok(())
}

/// The report's opening and Table 1 with the oracles' explanation.
fn table1_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "# AutoPath evaluation\n\n{} test volumes ({}), N = {} blocks, whole volumes with sliding windows. Dice per volume = (2|P∩G| + ε)/(|P| + |G| + ε), averaged over volumes.\n", r.volumes.len(), r.test_ids.join(", "), r.blocks);
    let _ = writeln!(md, "## Table 1 — strategies at AutoPath's dropping level, and the per-volume oracles\n\n| strategy | blocks dropped | FLOPs vs full | mean Dice | distinct paths |\n|---|---:|---:|---:|---:|");
    let distinct = |label: &str| {
        let s = &r.summary;
        s.autopath.iter().chain([&s.oracle, &s.tolerance_oracle]).find(|x| x.label == label).map(|x| x.distinct_paths)
    };
    for row in &r.table1 {
        let std = row.dice_std.map(|s| format!(" ± {s:.4}")).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {:.1} % | {:.1} % | {:.4}{std} | {} |",
            row.strategy,
            100.0 * row.drop_ratio,
            100.0 * row.flop_fraction,
            row.dice,
            distinct(&row.strategy).map_or("-".into(), |d| d.to_string())
        );
    }
    let _ = writeln!(
        md,
        "\nOracles: per volume, the best of the scored paths ({}): by the paper's reward with τ = {}, and the fewest FLOPs within Dice {} of the full network's on that volume. They bound what a policy could pick.",
        r.summary.oracle_search, r.summary.oracle_tau, r.summary.dice_tolerance
    );
    if let Some(above) = r.summary.above_random_at_every_budget {
        let _ = writeln!(
            md,
            "\n{}'s threshold sweep lies {} DropRandomN's curve at every FLOP fraction both cover (Pareto figure).",
            r.policies[0],
            if above { "above" } else { "NOT above" }
        );
    }
}

/// Links to the figures that were drawn and the qualitative overlays.
fn figures_section(md: &mut String, dir: &Path, overlays: &[(String, f64, PathBuf, PathBuf)]) {
    let _ = writeln!(md, "\n## Figures\n");
    for (f, t) in [
        ("fig_pareto", "Dice against FLOPs: AutoPath across keep thresholds, the heuristics and the oracle"),
        ("fig3_drop_n", "Fig. 3 — block dependency (DropN)"),
        ("fig4_drop_first", "Fig. 4 — DropFirstN"),
        ("fig5_drop_last", "Fig. 5 — DropLastN"),
        ("fig6_drop_random", "Figs. 6–7 — DropRandomN"),
        ("fig8_autopath_dropped", "Fig. 8 — blocks dropped by AutoPath"),
    ] {
        if dir.join(format!("{f}.svg")).exists() {
            let img = if dir.join(format!("{f}.png")).exists() { format!("{f}.png") } else { format!("{f}.svg") };
            let _ = writeln!(md, "### {t}\n\n![{t}]({img})\n");
        }
    }
    let _ = writeln!(md, "## Figs. 9–10 — qualitative (green: ground truth, blue: full backbone, red: AutoPath)\n");
    for (id, score, axial, coronal) in overlays {
        let _ = writeln!(
            md,
            "Case {id} (Dice {score:.4}):\n\n![axial]({}) ![coronal]({})\n",
            file_name(axial),
            file_name(coronal)
        );
    }
}

/// Each test volume: the full network, every policy's path and both oracles.
fn per_volume_section(md: &mut String, r: &Results) {
    let mut head = "| case | full |".to_string();
    let mut rule = "|---|---:|".to_string();
    for p in &r.policies {
        head += &format!(" {p} | mask | FLOPs |");
        rule += "---:|---|---:|";
    }
    let _ = writeln!(
        md,
        "## Per volume\n\n{head} tolerance oracle | mask | reward oracle | mask |\n{rule}---:|---|---:|---|"
    );
    for v in &r.volumes {
        let mut row = format!("| {} | {:.4} |", v.id, v.full);
        for p in &v.autopath {
            row += &format!(" {:.4} | {} | {:.1} % |", p.dice, p.mask, 100.0 * p.flop_fraction);
        }
        let (t, o) = (&v.tolerance_oracle, &v.oracle);
        let _ = writeln!(md, "{row} {:.4} | {} | {:.4} | {} |", t.dice, t.mask, o.dice, o.mask);
    }
}

/// The heuristics' mean Dice per n.
fn heuristics_section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "\n## DropN / DropFirstN / DropLastN / DropRandomN (mean Dice)\n\n| n | DropN (block n) | DropFirstN | DropLastN | DropRandomN mean ± std [min, max] |\n|---:|---:|---:|---:|---|");
    for i in 0..r.blocks {
        let f = |v: &[f64]| v.get(i).map_or("-".into(), |d| format!("{d:.4}"));
        let rnd = r
            .drop_random
            .get(i)
            .map_or("-".into(), |s| format!("{:.4} ± {:.4} [{:.4}, {:.4}]", s.mean, s.std, s.min, s.max));
        let _ = writeln!(md, "| {} | {} | {} | {} | {} |", i + 1, f(&r.drop_n), f(&r.drop_first), f(&r.drop_last), rnd);
    }
}

impl Results {
    /// Table 1 as plain text, for terminals.
    pub fn table1_text(&self) -> String {
        let mut s = format!("{:<40} {:>9} {:>9} {:>10}\n", "strategy", "dropped", "FLOPs", "Dice");
        for row in &self.table1 {
            s += &format!(
                "{:<40} {:>8.1}% {:>8.1}% {:>10.4}\n",
                row.strategy,
                100.0 * row.drop_ratio,
                100.0 * row.flop_fraction,
                row.dice
            );
        }
        s
    }
}
