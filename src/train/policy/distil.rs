//! Ours (`--method distil`): the policy learns, by cross-entropy, per-block keep targets taken from the
//! paths the segmenter itself finds cheapest on each training volume within a Dice tolerance.
//!
//! Why not only REINFORCE: with a handful of training volumes, sampled paths and a voxel reward whose
//! τ trades Dice for blocks at a rate that depends on the structure's size, the paper's method keeps
//! nearly every block on data it was not tuned on. Scoring the paths directly costs about one forward
//! tree per volume (shared prefixes) and gives the answer REINFORCE has to estimate.

use std::time::Instant;

use autopath_models::layers::precise_statistics;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{candle, Item, PolicyEpoch, Run};
use crate::error::{Error, Result};
use crate::search::{search, Objective, PathTable};
use crate::train::checkpoint::{read_json, write_json};

/// Spread of the soft targets, in FLOP fraction: a feasible path that costs this much more than the
/// cheapest one counts e⁻¹ as much. Blocks that only the slightly dearer feasible paths keep get a
/// target between 0 and 1, so the policy's probabilities rank blocks by need (what `--budget` uses).
const TARGET_SPREAD: f64 = 0.02;

/// Dice points over the tolerance that validation weighs like one point of FLOP saving.
const EXCESS_WEIGHT: f64 = 10.0;

/// The scored paths of the training and validation volumes, saved beside the run so that `--resume`
/// does not score them again.
#[derive(Serialize, Deserialize)]
struct Tables {
    objective: Objective,
    train: Vec<PathTable>,
    val: Vec<PathTable>,
}

fn tables(run: &mut Run, objective: Objective) -> Result<Tables> {
    let file = run.out.join("path_tables.json");
    if file.exists() {
        let t: Tables = read_json(&file)?;
        if t.objective == objective && t.train.len() == run.train.len() && t.val.len() == run.val.len() {
            return Ok(t);
        }
    }
    let mut score = |items: &[Item]| -> Result<Vec<PathTable>> {
        items.iter().map(|it| search(&mut run.evaluator, &it.prepared, &run.arch, objective)).collect()
    };
    let t = Tables { objective, train: score(&run.train)?, val: score(&run.val)? };
    write_json(&file, &t)?;
    Ok(t)
}

/// Per-block keep targets of one volume: the feasible paths weighted by how little they cost.
fn targets(table: &PathTable, delta: f64, n: usize) -> Vec<f32> {
    let feasible: Vec<_> = table.paths.iter().filter(|s| s.dice >= table.full_dice - delta).collect();
    let cheapest = feasible.iter().map(|s| s.flop_fraction).fold(f64::INFINITY, f64::min);
    let mut t = vec![0.0f64; n];
    let mut total = 0.0;
    for s in &feasible {
        let w = (-(s.flop_fraction - cheapest) / TARGET_SPREAD).exp();
        total += w;
        for (ti, &k) in t.iter_mut().zip(&s.mask) {
            *ti += w * f64::from(u8::from(k));
        }
    }
    t.into_iter().map(|v| (v / total) as f32).collect()
}

/// Binary cross-entropy of logits against soft targets, averaged: `softplus(l) − t·l`.
fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.relu()? + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    (softplus - (targets * logits)?)?.mean_all()
}

/// Trains the policy on the distilled targets, validating every `val_every` epochs.
pub(super) fn train(run: &mut Run, on_epoch: &dyn Fn(&PolicyEpoch)) -> Result<()> {
    let (cfg, n) = (run.cfg, run.n_blocks);
    let objective = Objective::DiceTolerance { delta: cfg.dice_tolerance };
    let mut tables = tables(run, objective)?;
    let targets: Vec<Vec<f32>> = tables.train.iter().map(|t| targets(t, cfg.dice_tolerance, n)).collect();
    for epoch in run.meta.epoch..cfg.epochs {
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..run.train.len()).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut run.rng);
        let (mut loss_sum, mut steps) = (0.0, 0usize);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let items: Vec<&Item> = chunk.iter().map(|&i| &run.train[i]).collect();
            let t: Vec<f32> = chunk.iter().flat_map(|&i| targets[i].iter().copied()).collect();
            let t = Tensor::from_vec(t, (chunk.len(), n), &Device::Cpu).map_err(candle)?;
            let logits = run.model.net.logits(&run.batch_input(&items)?, true).map_err(candle)?;
            let loss = cross_entropy(&logits, &t).map_err(candle)?;
            run.adam.step(&loss.backward().map_err(candle)?).map_err(candle)?;
            loss_sum += loss.to_scalar::<f32>().map_err(candle)? as f64;
            steps += 1;
        }
        let done = epoch + 1;
        let validate = done % cfg.val_every.max(1) == 0 || done == cfg.epochs;
        let (mut vs, mut vd, mut vdrop, mut best) = (None, None, None, false);
        if validate {
            recalibrate(run)?;
            let v = validate_greedy(run, &mut tables.val)?;
            (vs, vd, vdrop) = (Some(v.score), Some(v.dice), Some(v.dropped));
            best = run.record_validation(vs, vd, vdrop, done);
        }
        let report = PolicyEpoch {
            epoch: done,
            epochs: cfg.epochs,
            learned: n,
            reward: f64::NAN,
            advantage: f64::NAN,
            dropped: f64::NAN,
            loss: Some(loss_sum / steps.max(1) as f64),
            val_reward: vs,
            val_dice: vd,
            val_dropped: vdrop,
            seconds: t0.elapsed().as_secs_f64(),
        };
        run.finish_epoch(report, best, on_epoch)?;
    }
    Ok(())
}

/// Recomputes the policy's BatchNorm statistics for its current weights from the training volumes
/// (see [`precise_statistics`]): validation and the saved checkpoint then describe this policy, not a
/// blend of the last few steps' policies.
fn recalibrate(run: &Run) -> Result<()> {
    let b = run.cfg.batch.max(2);
    let chunks: Vec<Vec<&Item>> = run.train.chunks(b).filter(|c| c.len() > 1).map(|c| c.iter().collect()).collect();
    precise_statistics(&run.model.net, chunks.len(), |i| {
        let x = run.batch_input(&chunks[i]).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        run.model.net.forward(&x, true).map(|_| ())
    })
    .map_err(candle)
}

struct Validation {
    score: f64,
    dice: f64,
    dropped: f64,
}

/// The greedy paths on the validation volumes, scored from their tables (paths a beam search did not
/// visit are evaluated and added): mean FLOP saving minus [`EXCESS_WEIGHT`] × mean Dice loss beyond
/// the tolerance.
fn validate_greedy(run: &mut Run, val_tables: &mut [PathTable]) -> Result<Validation> {
    let (cfg, n) = (run.cfg, run.n_blocks);
    let (mut score, mut dice, mut dropped) = (0.0, 0.0, 0.0);
    for i in 0..run.val.len() {
        let p = run.deployed_probabilities(&run.val[i])?;
        let mask: Vec<bool> = p.iter().map(|&v| v >= cfg.threshold).collect();
        let table = &mut val_tables[i];
        if table.get(&mask).is_none() {
            let o = &run.evaluator.evaluate(&run.val[i].prepared, std::slice::from_ref(&mask), false)?[0];
            let flop_fraction = run.arch.path_flops(&mask) as f64 / run.arch.full_flops() as f64;
            table.paths.push(crate::search::Scored {
                mask: mask.clone(),
                dice: o.dice,
                accuracy: o.accuracy,
                flop_fraction,
            });
        }
        let s = table.get(&mask).ok_or_else(|| Error::invalid("policy validation", "path not scored"))?;
        let excess = (table.full_dice - s.dice - cfg.dice_tolerance).max(0.0);
        score += (1.0 - s.flop_fraction) - EXCESS_WEIGHT * excess;
        dice += s.dice;
        dropped += mask.iter().filter(|&&k| !k).count() as f64 / n as f64;
    }
    let nv = run.val.len().max(1) as f64;
    Ok(Validation { score: score / nv, dice: dice / nv, dropped: dropped / nv })
}
