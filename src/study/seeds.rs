//! The demo's claims over several seeds: per seed, our policy's saving and Dice loss, its distinct
//! paths, and its Dice against the heuristics' Pareto curves at the same FLOP fraction; then the mean and
//! spread over the seeds. `autopath demo --seeds 0,1,2` writes this table.

use serde::Serialize;

use crate::study::eval::Results;

/// The bars each seed's run must hold.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bars {
    /// Fewest blocks dropped, as a fraction.
    pub min_dropped: f64,
    /// Largest mean Dice loss against the full backbone.
    pub max_loss: f64,
    /// Fewest distinct paths.
    pub min_paths: usize,
}

/// The demo's bars.
pub const BARS: Bars = Bars { min_dropped: 0.35, max_loss: 0.01, min_paths: 2 };

/// One seed's row.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRow {
    /// The demo's seed.
    pub seed: u64,
    /// Full backbone's mean test Dice.
    pub full: f64,
    /// Our policy (the first evaluated, the distilled one): blocks dropped, FLOP fraction, Dice.
    pub dropped: f64,
    /// Mean FLOP fraction of its paths.
    pub flops: f64,
    /// Mean test Dice.
    pub dice: f64,
    /// Distinct paths on the test volumes.
    pub paths: usize,
    /// DropLastN's Dice at the same FLOP fraction (linear between its points).
    pub drop_last: f64,
    /// DropRandomN's mean Dice at the same FLOP fraction.
    pub drop_random: f64,
    /// The bars it misses (empty: it holds them).
    pub misses: Vec<String>,
}

impl SeedRow {
    /// Mean Dice loss against the full backbone.
    pub fn loss(&self) -> f64 {
        self.full - self.dice
    }
}

/// `y` at `x` on the polyline through `(xs, ys)` (any order of `xs`); the nearest end outside it.
pub fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    let mut pts: Vec<(f64, f64)> = xs.iter().copied().zip(ys.iter().copied()).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (pts[0], pts[pts.len() - 1]);
    if x <= first.0 {
        return first.1;
    }
    if x >= last.0 {
        return last.1;
    }
    let i = pts.iter().position(|p| p.0 >= x).unwrap_or(pts.len() - 1);
    let (a, b) = (pts[i - 1], pts[i]);
    if b.0 - a.0 <= f64::EPSILON {
        return b.1;
    }
    a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)
}

/// A seed's row from its evaluation: the heuristics' curves include the full backbone at FLOP fraction 1.
pub fn row(seed: u64, r: &Results, bars: Bars) -> Option<SeedRow> {
    let ours = r.summary.autopath.first()?;
    let full = r.summary.full_dice;
    let curve = |flops: &[f64], dice: &[f64]| {
        let xs: Vec<f64> = std::iter::once(1.0).chain(flops.iter().copied()).collect();
        let ys: Vec<f64> = std::iter::once(full).chain(dice.iter().copied()).collect();
        interpolate(&xs, &ys, ours.flop_fraction)
    };
    let random: Vec<f64> = r.drop_random.iter().map(|s| s.mean).collect();
    let mut row = SeedRow {
        seed,
        full,
        dropped: ours.drop_ratio,
        flops: ours.flop_fraction,
        dice: ours.dice,
        paths: ours.distinct_paths,
        drop_last: curve(&r.drop_last_flops, &r.drop_last),
        drop_random: curve(&r.drop_random_flops, &random),
        misses: Vec::new(),
    };
    row.misses = misses(&row, bars);
    Some(row)
}

fn misses(r: &SeedRow, bars: Bars) -> Vec<String> {
    let mut m = Vec::new();
    if r.dropped < bars.min_dropped {
        m.push(format!("{:.1} % dropped < {:.0} %", 100.0 * r.dropped, 100.0 * bars.min_dropped));
    }
    if r.loss() > bars.max_loss {
        m.push(format!("loss {:.4} > {}", r.loss(), bars.max_loss));
    }
    if r.paths < bars.min_paths {
        m.push(format!("{} path(s) < {}", r.paths, bars.min_paths));
    }
    if r.dice < r.drop_last {
        m.push(format!("below DropLastN ({:.4})", r.drop_last));
    }
    if r.dice < r.drop_random {
        m.push(format!("below DropRandomN ({:.4})", r.drop_random));
    }
    m
}

fn mean_std(v: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = v.clone().count().max(1) as f64;
    let mean = v.clone().sum::<f64>() / n;
    let var = v.map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// The seeds table in Markdown, with a mean ± std row (sample standard deviation).
pub fn markdown(rows: &[SeedRow], bars: Bars) -> String {
    let mut s = format!(
        "| seed | full | ours: dropped / FLOPs / Dice | loss | paths | DropLastN at the same FLOPs | DropRandomN at the same FLOPs | bars (≥ {:.0} % dropped, loss ≤ {}, ≥ {} paths, ≥ both heuristics) |\n|---|---:|---|---:|---:|---:|---:|---|\n",
        100.0 * bars.min_dropped,
        bars.max_loss,
        bars.min_paths
    );
    for r in rows {
        let verdict = if r.misses.is_empty() { "hold".to_string() } else { r.misses.join("; ") };
        s += &format!(
            "| {} | {:.4} | {:.1} % / {:.1} % / {:.4} | {:.4} | {} | {:.4} | {:.4} | {verdict} |\n",
            r.seed,
            r.full,
            100.0 * r.dropped,
            100.0 * r.flops,
            r.dice,
            r.loss(),
            r.paths,
            r.drop_last,
            r.drop_random
        );
    }
    let pm = |f: fn(&SeedRow) -> f64, scale: f64, digits: usize| {
        let (m, sd) = mean_std(rows.iter().map(f));
        format!("{:.digits$} ± {:.digits$}", m * scale, sd * scale)
    };
    s += &format!(
        "| mean ± std | {} | {} % / {} % / {} | {} | | {} | {} | {} of {} hold |\n",
        pm(|r| r.full, 1.0, 4),
        pm(|r| r.dropped, 100.0, 1),
        pm(|r| r.flops, 100.0, 1),
        pm(|r| r.dice, 1.0, 4),
        pm(SeedRow::loss, 1.0, 4),
        pm(|r| r.drop_last, 1.0, 4),
        pm(|r| r.drop_random, 1.0, 4),
        rows.iter().filter(|r| r.misses.is_empty()).count(),
        rows.len()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_between_points_in_any_order() {
        let (xs, ys) = ([1.0, 0.5, 0.75], [0.9, 0.5, 0.8]);
        assert!((interpolate(&xs, &ys, 0.6) - 0.62).abs() < 1e-12);
        assert_eq!(interpolate(&xs, &ys, 0.4), 0.5);
        assert_eq!(interpolate(&xs, &ys, 1.0), 0.9);
    }
}
