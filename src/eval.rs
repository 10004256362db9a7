//! `autopath eval`: the paper's study on the test split, on whole volumes — full backbone, DropN,
//! DropFirstN, DropLastN, DropRandomN and AutoPath — with Table 1, Figures 3–8 and qualitative overlays.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use autopath_models::reward::reward;

use crate::bundle::Bundle;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::figures::{histogram, line_chart, overlay_png, Series, AUTOPATH, FULL, TRUTH};
use crate::paths::PathEvaluator;
use crate::runtime::{SessionOptions, Sessions};
use crate::train::data::load_sample;
use crate::train::policy::{keep_probabilities, load_policy};
use crate::train::segment::{cases_by_id, load_segmenter};
use crate::volume::{read_volume, ReadOptions};
use plotters::style::RGBColor;

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Segmenter run.
    pub seg: PathBuf,
    /// Policy run (AutoPath rows need it).
    pub policy: Option<PathBuf>,
    /// Report folder.
    pub out: PathBuf,
    /// Random masks per dropping level (default 100 for N ≤ 8, else 500).
    pub random_repeats: Option<usize>,
    /// Seed of the random masks.
    pub seed: u64,
    /// Tiles per ORT call.
    pub tile_batch: usize,
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
    /// AutoPath keep mask.
    pub autopath_mask: Option<String>,
    /// AutoPath Dice.
    pub autopath: Option<f64>,
    /// Blocks AutoPath dropped.
    pub autopath_dropped: Option<usize>,
    /// AutoPath FLOP fraction.
    pub autopath_flops: Option<f64>,
    /// The path with the highest reward on this volume among all 2^N (N ≤ 10): what a perfect policy
    /// would choose, and so whether one path fits all volumes or paths should differ.
    #[serde(default)]
    pub oracle_mask: Option<String>,
    /// The oracle path's Dice.
    #[serde(default)]
    pub oracle: Option<f64>,
    /// Blocks the oracle path drops.
    #[serde(default)]
    pub oracle_dropped: Option<usize>,
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

/// `results.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Results {
    /// Number of blocks N.
    pub blocks: usize,
    /// Test case ids.
    pub test_ids: Vec<String>,
    /// Random masks per level.
    pub random_repeats: usize,
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
    /// Table 1.
    pub table1: Vec<TableRow>,
    /// Headline numbers.
    pub summary: serde_json::Value,
}

/// Largest N for which every one of the 2^N paths is evaluated per volume.
const ORACLE_MAX_BLOCKS: usize = 10;

fn err(e: impl std::fmt::Display) -> Error {
    Error::invalid("eval", e.to_string())
}

fn mask_text(m: &[bool]) -> String {
    m.iter().map(|&k| if k { '1' } else { '0' }).collect()
}

/// Runs the study and writes `report.md`, `results.json` and the figures into `opts.out`.
pub fn evaluate(opts: &EvalOptions, progress: &dyn Fn(usize, usize)) -> Result<Results> {
    let (net, cfg) = load_segmenter(&opts.seg, "best")?;
    let n_blocks = cfg.spec.num_blocks();
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let seg_bundle = opts.out.join("segmenter");
    crate::compile::compile(&net, &cfg, None, None, &seg_bundle, true, true)?;
    let bundle = Bundle::load(&seg_bundle)?;
    let arch = bundle.manifest.architecture.clone();
    let mut sessions = Sessions::open(&bundle, &SessionOptions::default())?;
    let mut ev = PathEvaluator::new(&mut sessions, cfg.window, opts.tile_batch, bundle.manifest.input.activation, 0.5);
    let policy = opts.policy.as_deref().map(|p| load_policy(p, "best")).transpose()?;

    let repeats = opts.random_repeats.unwrap_or(if n_blocks <= 8 { 100 } else { 500 });
    // The oracle scores paths with the policy's reward (its τ; the paper's 50 without a policy).
    let tau = policy.as_ref().map_or(50.0, |(_, pc, _)| pc.tau);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    // Random masks are shared by all volumes: one repeat = one mask applied to the whole test set.
    let random: Vec<Vec<Vec<bool>>> = (1..n_blocks)
        .map(|n| {
            (0..repeats)
                .map(|_| {
                    let mut m = vec![true; n_blocks];
                    for i in sample(&mut rng, n_blocks, n) {
                        m[i] = false;
                    }
                    m
                })
                .collect()
        })
        .collect();
    let flops = |m: &[bool]| arch.path_flops(m) as f64 / arch.full_flops() as f64;

    let dataset = Dataset::open(&cfg.data, Some(cfg.layout))?;
    let cases = cases_by_id(&dataset, &cfg.test_ids)?;
    if cases.is_empty() {
        return Err(err("the segmenter run has no test cases"));
    }
    let mut volumes = Vec::new();
    let mut random_dice: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); repeats]; n_blocks - 1]; // [n][repeat][volume]
    let mut qualitative = Vec::new();
    for (ci, case) in cases.iter().enumerate() {
        progress(ci, cases.len());
        let s = load_sample(case, &cfg.preprocessing)?;
        let prepared = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone()))?;
        let full = vec![true; n_blocks];
        let drop_n: Vec<Vec<bool>> = (0..n_blocks).map(|n| (0..n_blocks).map(|i| i != n).collect()).collect();
        let first: Vec<Vec<bool>> = (1..n_blocks).map(|n| (0..n_blocks).map(|i| i >= n).collect()).collect();
        let last: Vec<Vec<bool>> = (1..n_blocks).map(|n| (0..n_blocks).map(|i| i < n_blocks - n).collect()).collect();
        let auto = match &policy {
            Some((p, pc, _)) => {
                let probs = keep_probabilities(p, &s.image, cfg.spec.policy.input)?;
                Some(probs.iter().map(|&v| v >= pc.threshold).collect::<Vec<bool>>())
            }
            None => None,
        };
        let mut unique: HashMap<Vec<bool>, usize> = HashMap::new();
        let mut list = Vec::new();
        // For N ≤ 10 every path is scored (for N = 8 DropRandomN already visits nearly all 256).
        let every: Vec<Vec<bool>> = if n_blocks <= ORACLE_MAX_BLOCKS {
            (0..1usize << n_blocks).map(|b| (0..n_blocks).map(|i| b >> i & 1 == 1).collect()).collect()
        } else {
            Vec::new()
        };
        let all = std::iter::once(&full)
            .chain(&drop_n)
            .chain(&first)
            .chain(&last)
            .chain(random.iter().flatten())
            .chain(auto.iter())
            .chain(&every);
        for m in all {
            unique.entry(m.clone()).or_insert_with(|| {
                list.push(m.clone());
                list.len() - 1
            });
        }
        let outcomes = ev.evaluate(&prepared, &list, false)?;
        let dice = |m: &Vec<bool>| outcomes[unique[m]].dice;
        let kept = |m: &Vec<bool>| m.iter().filter(|&&k| k).count();
        let oracle = every.iter().max_by(|a, b| {
            let r = |m: &Vec<bool>| reward(outcomes[unique[m]].accuracy, kept(m), n_blocks, tau);
            r(a).total_cmp(&r(b)).then(kept(b).cmp(&kept(a)))
        });
        for (n, level) in random.iter().enumerate() {
            for (r, m) in level.iter().enumerate() {
                random_dice[n][r].push(dice(m));
            }
        }
        let v = VolumeResult {
            id: case.id.clone(),
            full: dice(&full),
            drop_n: drop_n.iter().map(dice).collect(),
            drop_first: first.iter().map(dice).collect(),
            drop_last: last.iter().map(dice).collect(),
            autopath_mask: auto.as_ref().map(|m| mask_text(m)),
            autopath: auto.as_ref().map(dice),
            autopath_dropped: auto.as_ref().map(|m| m.iter().filter(|&&k| !k).count()),
            autopath_flops: auto.as_ref().map(|m| flops(m)),
            oracle_mask: oracle.map(|m| mask_text(m)),
            oracle: oracle.map(dice),
            oracle_dropped: oracle.map(|m| n_blocks - kept(m)),
        };
        qualitative.push((ci, auto.clone()));
        volumes.push(v);
    }
    progress(cases.len(), cases.len());

    let nv = volumes.len() as f64;
    let mean = |f: &dyn Fn(&VolumeResult) -> f64| volumes.iter().map(f).sum::<f64>() / nv;
    let full_dice = mean(&|v| v.full);
    let drop_n: Vec<f64> = (0..n_blocks).map(|n| mean(&|v| v.drop_n[n])).collect();
    let drop_first: Vec<f64> = (0..n_blocks - 1).map(|n| mean(&|v| v.drop_first[n])).collect();
    let drop_last: Vec<f64> = (0..n_blocks - 1).map(|n| mean(&|v| v.drop_last[n])).collect();
    let drop_random: Vec<Stats> = random_dice
        .iter()
        .map(|reps| {
            Stats::of(&reps.iter().map(|vols| vols.iter().sum::<f64>() / vols.len() as f64).collect::<Vec<_>>())
        })
        .collect();

    let mut table1 = vec![TableRow {
        strategy: "Full backbone".into(),
        drop_ratio: 0.0,
        flop_fraction: 1.0,
        dice: full_dice,
        dice_std: None,
    }];
    let mut summary = serde_json::json!({"full_dice": full_dice, "test_volumes": volumes.len()});
    if policy.is_some() {
        let auto_drop = mean(&|v| v.autopath_dropped.unwrap_or(0) as f64);
        let auto_dice = mean(&|v| v.autopath.unwrap_or(0.0));
        let auto_flops = mean(&|v| v.autopath_flops.unwrap_or(1.0));
        let level = (auto_drop.round() as usize).clamp(1, n_blocks - 1);
        let first_mask: Vec<bool> = (0..n_blocks).map(|i| i >= level).collect();
        let last_mask: Vec<bool> = (0..n_blocks).map(|i| i < n_blocks - level).collect();
        let rand_flops = random[level - 1].iter().map(|m| flops(m)).sum::<f64>() / repeats as f64;
        let ratio = level as f64 / n_blocks as f64;
        table1.push(TableRow {
            strategy: format!("DropFirstN (n = {level})"),
            drop_ratio: ratio,
            flop_fraction: flops(&first_mask),
            dice: drop_first[level - 1],
            dice_std: None,
        });
        table1.push(TableRow {
            strategy: format!("DropLastN (n = {level})"),
            drop_ratio: ratio,
            flop_fraction: flops(&last_mask),
            dice: drop_last[level - 1],
            dice_std: None,
        });
        table1.push(TableRow {
            strategy: format!("DropRandomN (n = {level}, {repeats} repeats)"),
            drop_ratio: ratio,
            flop_fraction: rand_flops,
            dice: drop_random[level - 1].mean,
            dice_std: Some(drop_random[level - 1].std),
        });
        table1.push(TableRow {
            strategy: "AutoPath".into(),
            drop_ratio: auto_drop / n_blocks as f64,
            flop_fraction: auto_flops,
            dice: auto_dice,
            dice_std: None,
        });
        let distinct: std::collections::HashSet<&String> =
            volumes.iter().filter_map(|v| v.autopath_mask.as_ref()).collect();
        summary = serde_json::json!({
            "full_dice": full_dice, "autopath_dice": auto_dice, "dice_drop": full_dice - auto_dice,
            "blocks_dropped_mean": auto_drop, "drop_ratio": auto_drop / n_blocks as f64, "flop_fraction": auto_flops,
            "level": level, "drop_first_dice": drop_first[level - 1], "drop_last_dice": drop_last[level - 1], "drop_random_dice": drop_random[level - 1].mean,
            "distinct_paths": distinct.len(), "test_volumes": volumes.len(),
        });
    }
    let oracle: Vec<&VolumeResult> = volumes.iter().filter(|v| v.oracle.is_some()).collect();
    if !oracle.is_empty() {
        let distinct: std::collections::HashSet<&String> =
            oracle.iter().filter_map(|v| v.oracle_mask.as_ref()).collect();
        let m = |f: &dyn Fn(&VolumeResult) -> f64| oracle.iter().map(|v| f(v)).sum::<f64>() / oracle.len() as f64;
        summary["oracle_distinct_paths"] = distinct.len().into();
        summary["oracle_dice"] = m(&|v| v.oracle.unwrap_or(0.0)).into();
        summary["oracle_blocks_dropped_mean"] = m(&|v| v.oracle_dropped.unwrap_or(0) as f64).into();
        summary["oracle_tau"] = tau.into();
    }
    let results = Results {
        blocks: n_blocks,
        test_ids: cfg.test_ids.clone(),
        random_repeats: repeats,
        volumes,
        drop_n,
        drop_first,
        drop_last,
        drop_random,
        table1,
        summary,
    };

    // Qualitative: best, median and worst AutoPath volumes (or by full Dice without a policy).
    let mut ranked: Vec<usize> = (0..results.volumes.len()).collect();
    let score = |i: usize| results.volumes[i].autopath.unwrap_or(results.volumes[i].full);
    ranked.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    let mut picks = vec![ranked[0], ranked[ranked.len() / 2], ranked[ranked.len() - 1]];
    picks.dedup();
    let mut overlays = Vec::new();
    for &i in &picks {
        let case = &cases[qualitative[i].0];
        let s = load_sample(case, &cfg.preprocessing)?;
        let ct = read_volume(&case.image, &ReadOptions::default())?;
        let prepared = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone()))?;
        let mut masks = vec![vec![true; n_blocks]];
        masks.extend(qualitative[i].1.clone());
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
        let axial = opts.out.join(format!("overlay_case{}_axial.png", case.id));
        let coronal = opts.out.join(format!("overlay_case{}_coronal.png", case.id));
        overlay_png(&axial, &ct.data, &layers, 0, z, 3, 1.0)?;
        overlay_png(&coronal, &ct.data, &layers, 1, y, 3, sp[2] / sp[0])?;
        overlays.push((case.id.clone(), score(i), axial, coronal));
    }
    write_report(&opts.out, &results, &overlays)?;
    crate::train::checkpoint::write_json(&opts.out.join("results.json"), &results)?;
    Ok(results)
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

fn write_report(dir: &Path, r: &Results, overlays: &[(String, f64, PathBuf, PathBuf)]) -> Result<()> {
    let n = r.blocks;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let green = RGBColor(44, 160, 44);
    let red = RGBColor(214, 39, 40);
    let full_line = |len: usize, from: usize| Series {
        label: "full backbone".into(),
        points: (from..from + len).map(|i| (i as f64, r.table1[0].dice)).collect(),
        color: RGBColor(120, 120, 120),
        band: None,
        markers_only: false,
    };
    let ymin = |v: &[f64]| (v.iter().copied().fold(1.0f64, f64::min) - 0.05).max(0.0);
    line_chart(
        dir,
        "fig3_drop_n",
        "Fig. 3 - DropN: drop only block n",
        "block n",
        "mean Dice",
        &[
            Series {
                label: "DropN".into(),
                points: r.drop_n.iter().enumerate().map(|(i, &d)| ((i + 1) as f64, d)).collect(),
                color: blue,
                band: None,
                markers_only: true,
            },
            full_line(n, 1),
        ],
        (ymin(&r.drop_n), 1.0),
    )?;
    line_chart(
        dir,
        "fig4_drop_first",
        "Fig. 4 - DropFirstN: drop blocks 1..n",
        "n",
        "mean Dice",
        &[
            Series {
                label: "DropFirstN".into(),
                points: r.drop_first.iter().enumerate().map(|(i, &d)| ((i + 1) as f64, d)).collect(),
                color: orange,
                band: None,
                markers_only: false,
            },
            full_line(n - 1, 1),
        ],
        (ymin(&r.drop_first), 1.0),
    )?;
    line_chart(
        dir,
        "fig5_drop_last",
        "Fig. 5 - DropLastN: drop the last n blocks",
        "n",
        "mean Dice",
        &[
            Series {
                label: "DropLastN".into(),
                points: r.drop_last.iter().enumerate().map(|(i, &d)| ((i + 1) as f64, d)).collect(),
                color: green,
                band: None,
                markers_only: false,
            },
            full_line(n - 1, 1),
        ],
        (ymin(&r.drop_last), 1.0),
    )?;
    let means: Vec<f64> = r.drop_random.iter().map(|s| s.mean).collect();
    let mins: Vec<f64> = r.drop_random.iter().map(|s| s.min).collect();
    line_chart(
        dir,
        "fig6_drop_random",
        &format!("Figs. 6-7 - DropRandomN ({} repeats): mean, ±std band, min, max", r.random_repeats),
        "blocks dropped n",
        "mean Dice",
        &[
            Series {
                label: "mean (±std)".into(),
                points: means.iter().enumerate().map(|(i, &d)| ((i + 1) as f64, d)).collect(),
                color: red,
                band: Some(r.drop_random.iter().map(|s| (s.mean - s.std, s.mean + s.std)).collect()),
                markers_only: false,
            },
            Series {
                label: "min".into(),
                points: mins.iter().enumerate().map(|(i, &d)| ((i + 1) as f64, d)).collect(),
                color: RGBColor(148, 103, 189),
                band: None,
                markers_only: false,
            },
            Series {
                label: "max".into(),
                points: r.drop_random.iter().enumerate().map(|(i, s)| ((i + 1) as f64, s.max)).collect(),
                color: RGBColor(140, 86, 75),
                band: None,
                markers_only: false,
            },
            full_line(n - 1, 1),
        ],
        (ymin(&mins), 1.0),
    )?;
    let dropped: Vec<usize> = r.volumes.iter().filter_map(|v| v.autopath_dropped).collect();
    if !dropped.is_empty() {
        histogram(
            dir,
            "fig8_autopath_dropped",
            "Fig. 8 - blocks dropped by AutoPath per test volume",
            "blocks dropped",
            &dropped,
            n,
        )?;
    }

    let mut md = String::new();
    let _ = writeln!(md, "# AutoPath evaluation\n\n{} test volumes ({}), N = {} blocks, whole volumes with sliding windows. Dice per volume = (2|P∩G| + ε)/(|P| + |G| + ε), averaged over volumes.\n", r.volumes.len(), r.test_ids.join(", "), n);
    let _ = writeln!(md, "## Table 1 — strategies at AutoPath's dropping level\n\n| strategy | blocks dropped | FLOPs vs full | mean Dice |\n|---|---:|---:|---:|");
    for row in &r.table1 {
        let std = row.dice_std.map(|s| format!(" ± {s:.4}")).unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {:.1} % | {:.1} % | {:.4}{std} |",
            row.strategy,
            100.0 * row.drop_ratio,
            100.0 * row.flop_fraction,
            row.dice
        );
    }
    if let Some(d) = r.summary.get("oracle_distinct_paths") {
        let f = |k: &str| r.summary.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let auto = r.summary.get("distinct_paths").map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            md,
            "\nPer-volume oracle (best reward among all 2^N paths, τ = {}): mean Dice {:.4}, {:.2} blocks dropped on average, {d} distinct paths over {} volumes (AutoPath: {auto}).",
            f("oracle_tau"),
            f("oracle_dice"),
            f("oracle_blocks_dropped_mean"),
            r.volumes.len()
        );
    }
    let _ = writeln!(md, "\n## Figures\n");
    for (f, t) in [
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
    let _ = writeln!(
        md,
        "## Per volume\n\nOracle: the path with the highest reward on that volume among all 2^N (the policy's τ), i.e. what a perfect policy would pick.\n\n| case | full | AutoPath | mask | dropped | FLOPs | oracle | oracle mask | oracle dropped |\n|---|---:|---:|---|---:|---:|---:|---|---:|"
    );
    for v in &r.volumes {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {} | {} | {} | {} | {} | {} | {} |",
            v.id,
            v.full,
            v.autopath.map_or("-".into(), |d| format!("{d:.4}")),
            v.autopath_mask.clone().unwrap_or_default(),
            v.autopath_dropped.map_or("-".into(), |d| d.to_string()),
            v.autopath_flops.map_or("-".into(), |f| format!("{:.1} %", 100.0 * f)),
            v.oracle.map_or("-".into(), |d| format!("{d:.4}")),
            v.oracle_mask.clone().unwrap_or_default(),
            v.oracle_dropped.map_or("-".into(), |d| d.to_string()),
        );
    }
    let _ = writeln!(md, "\n## DropN / DropFirstN / DropLastN / DropRandomN (mean Dice)\n\n| n | DropN (block n) | DropFirstN | DropLastN | DropRandomN mean ± std [min, max] |\n|---:|---:|---:|---:|---|");
    for i in 0..n {
        let f = |v: &[f64]| v.get(i).map_or("-".into(), |d| format!("{d:.4}"));
        let rnd = r
            .drop_random
            .get(i)
            .map_or("-".into(), |s| format!("{:.4} ± {:.4} [{:.4}, {:.4}]", s.mean, s.std, s.min, s.max));
        let _ = writeln!(md, "| {} | {} | {} | {} | {} |", i + 1, f(&r.drop_n), f(&r.drop_first), f(&r.drop_last), rnd);
    }
    crate::atomic::write_bytes_atomically(&dir.join("report.md"), md.as_bytes())
}
