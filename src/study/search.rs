//! The best block path for one volume, found by scoring paths with the real network: every one of the
//! 2^N paths for N ≤ [`EXHAUSTIVE_MAX_BLOCKS`], a beam search over keep masks above (ResNet-50 has
//! N = 16). `eval`'s oracle rows and the distilled policy's training targets both come from here.

use autopath_bundle::PathCost;
use std::collections::HashMap;

use autopath_models::reward::reward;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::study::path_eval::{PathEvaluator, Prepared};
use autopath_bundle::Architecture;

/// Largest N for which every path is scored.
pub const EXHAUSTIVE_MAX_BLOCKS: usize = 10;

/// Prefixes kept at each depth of the beam search (at most 4·N·width paths scored per volume). Checked
/// on r18 networks (N = 8), where the exhaustive answer is known (`tests/search.rs`). Width 8 sufficed
/// for the paper's decoder; with the skip decoder, where paths keeping little beyond stage 0 compete,
/// it missed the reward oracle on one of 8 volumes (keep {3, 4, 7} instead of {6, 7}); 16 finds it.
pub const BEAM_WIDTH: usize = 16;

/// What "best" means for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The paper's reward `acc·(1 − u²) − τ·(1 − acc)`, highest wins (ties: fewer blocks kept).
    Reward {
        /// Penalty per wrong voxel.
        tau: f64,
    },
    /// The fewest FLOPs among paths whose Dice is at most `delta` below the full network's on this
    /// volume (ties: higher Dice). Dice is normalised by the structure's size, so one tolerance means
    /// the same on a small liver and on a large brain region, unlike the voxel reward's τ.
    DiceTolerance {
        /// Largest accepted Dice loss against the full network.
        delta: f64,
    },
}

/// One scored path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Keep mask.
    pub mask: Vec<bool>,
    /// Dice on the volume.
    pub dice: f64,
    /// Voxel accuracy on the volume.
    pub accuracy: f64,
    /// FLOPs as a fraction of the full network's.
    pub flop_fraction: f64,
}

impl Scored {
    /// A path's evaluation on one volume, with its FLOP fraction.
    pub fn new(mask: Vec<bool>, outcome: &crate::study::path_eval::Outcome, arch: &Architecture) -> Scored {
        let flop_fraction = arch.flop_fraction(&mask);
        Scored { mask, dice: outcome.dice, accuracy: outcome.accuracy, flop_fraction }
    }

    fn kept(&self) -> usize {
        self.mask.iter().filter(|&&k| k).count()
    }
}

/// Every path of a volume that was scored, and the full network's Dice on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathTable {
    /// Scored paths (the all-kept path included).
    pub paths: Vec<Scored>,
    /// Dice of the all-kept path.
    pub full_dice: f64,
    /// Whether every one of the 2^N paths is in `paths`.
    pub exhaustive: bool,
}

impl PathTable {
    /// Scores the masks this table lacks, each once, in one pass of the evaluator (shared prefixes),
    /// and adds them.
    pub fn score_missing<'m>(
        &mut self,
        ev: &mut PathEvaluator,
        prepared: &Prepared,
        arch: &Architecture,
        masks: impl IntoIterator<Item = &'m Vec<bool>>,
    ) -> Result<()> {
        let wanted: Vec<Vec<bool>> = masks
            .into_iter()
            .filter(|m| self.get(m).is_none())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let outcomes = ev.evaluate(prepared, &wanted, false)?;
        for (m, o) in wanted.into_iter().zip(outcomes) {
            self.paths.push(Scored::new(m, &o, arch));
        }
        Ok(())
    }

    /// The best scored path under `objective`.
    pub fn best(&self, objective: Objective) -> &Scored {
        let key = |s: &Scored| score(s, objective, self.full_dice);
        self.paths.iter().max_by(|a, b| key(a).total_cmp(&key(b))).expect("the all-kept path is always scored")
    }

    /// The scored path with this mask, if any.
    pub fn get(&self, mask: &[bool]) -> Option<&Scored> {
        self.paths.iter().find(|s| s.mask == mask)
    }
}

/// Higher is better. For the Dice tolerance, feasible paths rank by saved FLOPs (Dice breaks ties) and
/// every infeasible path ranks below every feasible one, by Dice.
fn score(s: &Scored, objective: Objective, full_dice: f64) -> f64 {
    match objective {
        Objective::Reward { tau } => reward(s.accuracy, s.kept(), s.mask.len(), tau) - 1e-9 * s.kept() as f64,
        Objective::DiceTolerance { delta } => {
            if s.dice >= full_dice - delta {
                10.0 + (1.0 - s.flop_fraction) + 1e-6 * s.dice
            } else {
                s.dice
            }
        }
    }
}

/// Every keep mask over `n` blocks.
pub fn every_path(n: usize) -> Vec<Vec<bool>> {
    (0..1usize << n).map(|b| (0..n).map(|i| b >> i & 1 == 1).collect()).collect()
}

fn score_masks(
    ev: &mut PathEvaluator,
    prep: &Prepared,
    arch: &Architecture,
    masks: &[Vec<bool>],
    seen: &mut HashMap<Vec<bool>, Scored>,
) -> Result<()> {
    let new: Vec<Vec<bool>> = masks.iter().filter(|m| !seen.contains_key(*m)).cloned().collect();
    let outcomes = ev.evaluate(prep, &new, false)?;
    for (m, o) in new.into_iter().zip(outcomes) {
        seen.insert(m.clone(), Scored::new(m, &o, arch));
    }
    Ok(())
}

/// The paths of one volume worth knowing for `objective`: every path for N ≤
/// [`EXHAUSTIVE_MAX_BLOCKS`], else a beam search of width [`BEAM_WIDTH`].
pub fn search(ev: &mut PathEvaluator, prep: &Prepared, arch: &Architecture, objective: Objective) -> Result<PathTable> {
    if arch.blocks.len() <= EXHAUSTIVE_MAX_BLOCKS {
        exhaustive(ev, prep, arch)
    } else {
        beam(ev, prep, arch, objective, BEAM_WIDTH)
    }
}

/// Every one of the 2^N paths, scored.
pub fn exhaustive(ev: &mut PathEvaluator, prep: &Prepared, arch: &Architecture) -> Result<PathTable> {
    let mut seen = HashMap::new();
    score_masks(ev, prep, arch, &every_path(arch.blocks.len()), &mut seen)?;
    Ok(table(seen, arch.blocks.len(), true))
}

fn table(seen: HashMap<Vec<bool>, Scored>, n: usize, exhaustive: bool) -> PathTable {
    let full_dice = seen.get(&vec![true; n]).map_or(f64::NAN, |s| s.dice);
    let mut paths: Vec<Scored> = seen.into_values().collect();
    paths.sort_by(|a, b| b.mask.cmp(&a.mask));
    PathTable { paths, full_dice, exhaustive }
}

/// Decides block 0, then 1, …: each prefix of the beam is extended by keeping and by dropping the next
/// block; each extension is scored by the better of its two completions, every later block kept or
/// every later block dropped (the path evaluator shares their common prefixes), and the best `width`
/// extensions survive; then [`refine`]. Every scored path stays a candidate for the best.
pub fn beam(
    ev: &mut PathEvaluator,
    prep: &Prepared,
    arch: &Architecture,
    objective: Objective,
    width: usize,
) -> Result<PathTable> {
    let n = arch.blocks.len();
    let width = width.max(1);
    let full = vec![true; n];
    let mut seen = HashMap::new();
    score_masks(ev, prep, arch, std::slice::from_ref(&full), &mut seen)?;
    let full_dice = seen[&full].dice;
    let mut beam: Vec<Vec<bool>> = vec![Vec::new()];
    for _ in 0..n {
        let extensions: Vec<Vec<bool>> = beam
            .iter()
            .flat_map(|prefix| {
                [true, false].map(|keep| {
                    let mut m = prefix.clone();
                    m.push(keep);
                    m
                })
            })
            .collect();
        let complete = |prefix: &[bool], rest: bool| {
            let mut m = prefix.to_vec();
            m.resize(n, rest);
            m
        };
        let completions: Vec<Vec<bool>> =
            extensions.iter().flat_map(|e| [complete(e, true), complete(e, false)]).collect();
        score_masks(ev, prep, arch, &completions, &mut seen)?;
        let value = |e: &Vec<bool>| {
            let (a, b) = (&seen[&complete(e, true)], &seen[&complete(e, false)]);
            score(a, objective, full_dice).max(score(b, objective, full_dice))
        };
        let mut ranked: Vec<(f64, Vec<bool>)> = extensions.into_iter().map(|e| (value(&e), e)).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        beam = ranked.into_iter().take(width).map(|(_, e)| e).collect();
    }
    refine(ev, prep, arch, objective, full_dice, &mut seen)?;
    Ok(table(seen, n, false))
}

/// Hill climbing from the best path found: score every path one or two block flips away, move to the
/// best if it is better, repeat until none is. Catches what the beam's two completions misjudge.
fn refine(
    ev: &mut PathEvaluator,
    prep: &Prepared,
    arch: &Architecture,
    objective: Objective,
    full_dice: f64,
    seen: &mut HashMap<Vec<bool>, Scored>,
) -> Result<()> {
    let n = arch.blocks.len();
    let value = |s: &Scored| score(s, objective, full_dice);
    let best_of = |seen: &HashMap<Vec<bool>, Scored>| {
        seen.values().max_by(|a, b| value(a).total_cmp(&value(b))).map(|s| s.mask.clone()).unwrap_or_default()
    };
    let mut current = best_of(seen);
    loop {
        let mut neighbours = Vec::new();
        for i in 0..n {
            for j in i..n {
                let mut m = current.clone();
                m[i] = !m[i];
                if j > i {
                    m[j] = !m[j];
                }
                neighbours.push(m);
            }
        }
        score_masks(ev, prep, arch, &neighbours, seen)?;
        let next = best_of(seen);
        if value(&seen[&next]) <= value(&seen[&current]) {
            return Ok(());
        }
        current = next;
    }
}
