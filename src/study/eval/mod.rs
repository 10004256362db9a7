//! `autopath eval`: the paper's study on the test split, on whole volumes — full backbone, DropN,
//! DropFirstN, DropLastN, DropRandomN and AutoPath — with Table 1, Figures 3–8 and qualitative overlays.
//!
//! Three concerns: running the study on the volumes (here), the results and Table 1 made from them
//! ([`results`]), and the report with its figures ([`report`]).

use autopath_bundle::PathCost;
use std::collections::HashMap;
use std::path::PathBuf;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::study::dataset::Dataset;
use crate::study::path_eval::{self, PathEvaluator, Prepared};
use crate::study::search::{search, Objective, PathTable, Scored, BEAM_WIDTH, EXHAUSTIVE_MAX_BLOCKS};
use crate::study::train::data::{load_sample, Sample};
use crate::study::train::infer::keep_probabilities;
use crate::study::train::policy::{load_policy, Method, DICE_TOLERANCE};
use crate::study::train::segment::{cases_by_id, load_segmenter};
use autopath_bundle::{Architecture, Bundle};

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
    /// The graphs' measured times (`--cost`, from `autopath bench --calibrate` on a bundle of this
    /// segmenter): the Pareto curves are also drawn against measured time.
    pub cost: Option<autopath_bundle::MeasuredCost>,
}

mod report;
mod results;
pub mod timed;
pub mod trust;

use report::{overlays, write_report};
pub use results::*;
use results::{assemble, Assembly};

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
    if let Some(c) = &opts.cost {
        c.validate(n_blocks).map_err(|e| Error::invalid("--cost", e))?;
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
    let mut results = results;
    let calibration_ids: Vec<String> = cfg.val_ids.iter().chain(&cfg.train_ids).cloned().collect();
    let calibration = cases_by_id(&dataset, &calibration_ids)?;
    let input = cfg.spec.policy.input;
    results.trust = Some(trust::analyse(
        &results,
        &policies.iter().map(|p| p.threshold).collect::<Vec<_>>(),
        &trust::case_features(&calibration, &cfg.preprocessing, input)?,
        &trust::case_features(&cases, &cfg.preprocessing, input)?,
    ));
    results.measured_time = opts.cost.as_ref().map(|c| timed::curves(&results, c, &random));
    let overlays = overlays(&opts.out, &mut ev, &cases, &cfg.preprocessing, &results, policies.first())?;
    write_report(&opts.out, &results, &overlays)?;
    crate::study::train::checkpoint::write_json(&opts.out.join("results.json"), &results)?;
    Ok(results)
}
