//! The study's report: `report.md` with Table 1, the paper's figures, the Pareto figure and overlays
//! of test volumes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis};
use plotters::style::RGBColor;

use super::results::Results;
use super::Policy;
use crate::error::Result;
use crate::input::preprocess::Preprocess;
use crate::input::volume::{read_volume, ReadOptions};
use crate::study::figures::{histogram, line_chart, overlay_png, Series, AUTOPATH, FULL, TRUTH};
use crate::study::path_eval::PathEvaluator;
use crate::study::train::data::load_sample;

/// Qualitative overlays of the best, median and worst volumes of the first policy (by full Dice
/// without a policy).
pub(super) fn overlays(
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
        // Masks on the network's grid, drawn over the image on its own grid (they differ when resampled).
        let back = |m: Array3<u8>| prep.restore(m, &s.record);
        let truth = back(s.labels.mapv(|l| u8::from(l > 0)));
        let full_pred = back(preds[0].prediction.clone().unwrap_or_else(|| Array3::zeros(s.labels.dim())));
        let mut layers: Vec<(&Array3<u8>, [u8; 3])> = vec![(&truth, TRUTH), (&full_pred, FULL)];
        let auto_pred = preds.get(1).and_then(|p| p.prediction.clone()).map(back);
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

/// Dice against the fraction of the full network's measured time (`eval --cost`): the same paths as
/// the FLOP figure, costed with the graphs' times on one provider.
fn pareto_time_figure(dir: &Path, r: &Results, t: &super::timed::TimeCurves) -> Result<()> {
    let colours = [RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(227, 119, 194)];
    let line = |label: String, mut points: Vec<(f64, f64)>, color: RGBColor| {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Series { label, points, color, band: None, markers_only: false }
    };
    let mut series = vec![
        line("DropRandomN (mean)".into(), t.random.clone(), RGBColor(31, 119, 180)),
        line("DropFirstN".into(), t.first.clone(), RGBColor(255, 127, 14)),
        line("DropLastN".into(), t.last.clone(), RGBColor(44, 160, 44)),
    ];
    for (i, (label, curve)) in r.policies.iter().zip(&t.policies).enumerate() {
        series.push(line(format!("{label} (thresholds)"), curve.clone(), colours[i % colours.len()]));
    }
    let bottom = (r.summary.full_dice - 0.3).max(0.0);
    line_chart(
        dir,
        "fig_pareto_time",
        &format!("Dice against measured time ({}, {})", t.provider, t.device),
        "fraction of the full network's measured time",
        "mean Dice",
        &series,
        (bottom, (r.summary.full_dice + 0.05).min(1.0)),
    )?;
    Ok(())
}

pub(super) fn write_report(dir: &Path, r: &Results, overlays: &[(String, f64, PathBuf, PathBuf)]) -> Result<()> {
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
    if let Some(t) = &r.measured_time {
        pareto_time_figure(dir, r, t)?;
    }
    let mut md = String::new();
    table1_section(&mut md, r);
    figures_section(&mut md, dir, overlays);
    per_volume_section(&mut md, r);
    heuristics_section(&mut md, r);
    if let Some(t) = &r.trust {
        super::trust::section(&mut md, dir, r, t)?;
    }
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
    if let Some(t) = &r.measured_time {
        for ((label, time), s) in r.policies.iter().zip(&t.chosen).zip(&r.summary.autopath) {
            let _ = writeln!(
                md,
                "\n{label} at its threshold spends {:.1} % of the full network's measured time ({}, {}) for {:.1} % of its FLOPs (figure: Dice against measured time).",
                100.0 * time,
                t.provider,
                t.device,
                100.0 * s.flop_fraction
            );
        }
    }
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
        ("fig_pareto_time", "Dice against measured time: the same paths costed with the graphs' measured times"),
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
