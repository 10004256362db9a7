//! Evaluating many block paths on one volume, sharing work between paths: the stem runs once, and
//! paths are visited in lexicographic order so that each reuses the block outputs of the longest
//! prefix it shares with the previous one. Policy rewards and the heuristic study both need hundreds
//! of paths per volume; without sharing they would cost hundreds of full forward passes. Where the
//! bundle has the head split at the skip decoder's low-level part (`compile`'s `split_head`), paths
//! that agree on the blocks before the low-level features also share that part of the head.
//!
//! On the CPU the work is spread over two session sets with the cores shared out between them: the
//! blocks' small 3D tensors split poorly inside one graph (see [`PathEvaluator::with_workers`]).
//! Several volumes go to the sets whole ([`PathEvaluator::per_volume`]); a single volume's tile
//! batches are spread over them. A volume also remembers the outcome of every path scored on it, so
//! that a path asked again (the paper's REINFORCE samples the same paths epoch after epoch) costs
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ndarray::{s, Array3, Array4, Array5, ArrayView5, Axis};
use rayon::prelude::*;

use crate::deploy::chain::Segment;
use crate::deploy::{SessionOptions, Sessions};
use crate::error::{Error, Result};
use crate::input::window::{batch_of_tiles, blended, pad_to_patch, Coverage, WindowConfig};
use crate::labels::Agreement;
use autopath_bundle::{Activation, Bundle, LowLevel};

/// One value per tile batch of a volume (features, skip parts), shared between paths.
type PerBatch = Arc<Vec<Array5<f32>>>;

/// A volume ready for path evaluation: tiles extracted and the stem already run.
pub struct Prepared {
    shape: [usize; 3],
    /// The tiles' blending weights.
    coverage: Coverage,
    /// Tile origins, grouped in batches.
    batches: Vec<Vec<[usize; 3]>>,
    /// Stem output per batch.
    stem: PerBatch,
    /// Labels (mapped) on the network grid, for scoring; may be empty.
    labels: Option<Array3<u8>>,
    /// Outcomes (without predictions) of the paths scored so far. Exact: a path's outcome depends only
    /// on the volume and the sessions, which stay the same for the evaluator's life.
    scored: Mutex<HashMap<Vec<bool>, Outcome>>,
    /// With the split head: the skip parts of the stage-0 paths used, most recent first.
    skip_parts: SkipParts,
}

/// A volume's skip parts by the stage-0 path that made them, most recent first, within the bytes
/// that all volumes of an evaluator may keep ([`SKIP_PART_BYTES`]). Why remembered across calls:
/// policy training scores a few paths per call, call after call on the same volumes (the demo's
/// distilled policy: 685 skip parts computed for 1336 head runs when only the last two were kept, 145
/// with all four of an r18's stage-0 paths).
struct SkipParts {
    kept: Mutex<Vec<(Vec<bool>, PerBatch)>>,
    /// Bytes kept by every volume of the evaluator.
    used: Arc<AtomicUsize>,
    /// The most `used` may reach.
    limit: usize,
}

fn bytes(parts: &PerBatch) -> usize {
    parts.iter().map(|a| a.len() * std::mem::size_of::<f32>()).sum()
}

impl SkipParts {
    fn new(used: Arc<AtomicUsize>, limit: usize) -> Self {
        SkipParts { kept: Mutex::default(), used, limit }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<bool>, PerBatch)>> {
        self.kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, prefix: &[bool]) -> Option<PerBatch> {
        let mut kept = self.kept();
        let i = kept.iter().position(|(p, _)| p == prefix)?;
        let hit = kept.remove(i);
        let parts = hit.1.clone();
        kept.insert(0, hit);
        Some(parts)
    }

    /// Keeps `parts` if the budget allows, after giving up this volume's least recent ones.
    fn keep(&self, prefix: &[bool], parts: &PerBatch) {
        let size = bytes(parts);
        let mut kept = self.kept();
        while self.used.load(Ordering::Relaxed) + size > self.limit {
            let Some((_, old)) = kept.pop() else { return };
            self.used.fetch_sub(bytes(&old), Ordering::Relaxed);
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        kept.insert(0, (prefix.to_vec(), parts.clone()));
    }
}

impl Drop for SkipParts {
    fn drop(&mut self) {
        let size: usize = self.kept().iter().map(|(_, p)| bytes(p)).sum();
        self.used.fetch_sub(size, Ordering::Relaxed);
    }
}

impl Prepared {
    fn scored(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<bool>, Outcome>> {
        // A panic elsewhere cannot leave the map half-written: entries are inserted whole.
        self.scored.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the head reads besides the backbone's output, per tile batch.
enum HeadLow {
    /// The low-level features (the head graph).
    Features(PerBatch),
    /// Their skip part (the split head's second graph).
    SkipPart(PerBatch),
}

/// How one path did on one volume.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Fraction of voxels whose binarised prediction equals the label.
    pub accuracy: f64,
    /// Foreground Dice `(2|P∩G| + ε) / (|P| + |G| + ε)`.
    pub dice: f64,
    /// The prediction, when asked for.
    pub prediction: Option<Array3<u8>>,
}

/// Runs paths through a bundle's sessions.
pub struct PathEvaluator {
    /// One session set per worker; tile batch `b` runs on worker `b % workers.len()`.
    workers: Vec<Sessions>,
    setup: Setup,
}

/// What the evaluator knows of the bundle and the window, besides its sessions.
#[derive(Clone)]
struct Setup {
    /// Projection shortcut per block (dropped blocks without one are the identity).
    has_shortcut: Vec<bool>,
    low_level: Option<LowLevel>,
    /// Every set has the split head open: paths that agree on the blocks before the low-level
    /// features share one skip part.
    split_head: bool,
    /// Bytes of skip parts kept by all volumes prepared with this evaluator.
    skip_part_bytes: Arc<AtomicUsize>,
    window: WindowConfig,
    tile_batch: usize,
    activation: Activation,
    threshold: f32,
}

/// Session sets [`PathEvaluator::open`] uses: one per core, at most [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    cores().min(MAX_WORKERS)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mask_key(m: &[bool]) -> Vec<u8> {
    m.iter().map(|&k| u8::from(!k)).collect() // kept first: the all-kept prefix is shared most
}

/// Bytes of skip parts that the volumes of one evaluator keep at most. At the demo's tiles a skip
/// part takes 295 kB per tile: an r18's four of a demo volume (8 tiles) 9.4 MB, one of a
/// 200×512×512 volume (1200 tiles) 354 MB.
const SKIP_PART_BYTES: usize = 1 << 30;

/// Most session sets opened: the demo's volumes have 2 batches of 4 tiles, and a set beyond a volume's
/// batches would idle; on more cores each set's sessions get more threads instead.
const MAX_WORKERS: usize = 2;

impl PathEvaluator {
    /// An evaluator over a bundle's graphs on the CPU, with the bundle's activation and threshold and
    /// the segmenter's window: one worker per core, at most [`MAX_WORKERS`] (see [`Self::with_workers`];
    /// on 16 cores, two sets of 8 threads: not measured there).
    pub fn open(bundle: &Bundle, window: WindowConfig, tile_batch: usize) -> Result<Self> {
        Self::with_workers(bundle, window, tile_batch, default_workers(), &SessionOptions::default())
    }

    /// An evaluator with `workers` session sets. One set computes on ONNX Runtime's shared pool; more
    /// each compute on threads of their own (the cores shared out), and a volume's tile batches are
    /// spread over them. Measured on 2 cores with the demo's graphs (batches of 4 tiles of 32×96×96,
    /// the head and three blocks): one set on both threads 71–75 ms, one set on one thread
    /// 106–111 ms, two sets on one thread each 56–64 ms; `eval` on the demo 188 → 153 s, the same
    /// results to the bit. `session` chooses the provider and the CPU threads to share out
    /// (`threads`, default the cores); a GPU provider gets one set (its calls queue on the device anyway).
    pub fn with_workers(
        bundle: &Bundle,
        window: WindowConfig,
        tile_batch: usize,
        workers: usize,
        session: &SessionOptions,
    ) -> Result<Self> {
        let gpu = session.ep != crate::deploy::ExecutionProvider::Cpu;
        let workers = if gpu { 1 } else { workers.max(1) };
        let threads = session.threads.unwrap_or_else(cores);
        let own_threads = (workers > 1).then(|| (threads / workers).max(1));
        let opts = SessionOptions { own_threads, ..session.clone() };
        let mut workers = (0..workers).map(|_| Sessions::open(bundle, &opts)).collect::<Result<Vec<_>>>()?;
        let mut split_head = true;
        for w in &mut workers {
            split_head &= w.open_split_head(bundle)?;
        }
        let input = &bundle.manifest.input;
        let setup = Setup {
            has_shortcut: workers[0].shortcuts.iter().map(Option::is_some).collect(),
            low_level: workers[0].low_level.clone(),
            split_head,
            skip_part_bytes: Arc::default(),
            window,
            tile_batch: tile_batch.max(1),
            activation: input.activation,
            threshold: input.threshold,
        };
        Ok(PathEvaluator { workers, setup })
    }

    /// `f` on every item, the items handed out to the session sets as they come free, each set
    /// running every tile batch of its volume itself; the results in item order. The outcomes are
    /// the same as [`Self::evaluate`]'s: the same graphs on the same number of threads.
    ///
    /// Why: with one volume's batches spread over the sets, the sets wait for each other after
    /// every segment and while the blended prediction is scored on one core (`eval` on the demo
    /// kept 1.56 of 2 cores busy); with whole volumes they do not wait.
    pub fn per_volume<I: Send, T: Send>(
        &mut self,
        items: Vec<I>,
        f: impl Fn(&mut PathEvaluator, I) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        if self.workers.len() < 2 || items.len() < 2 {
            return items.into_iter().map(|item| f(self, item)).collect();
        }
        let n = items.len();
        let queue = Mutex::new(items.into_iter().enumerate());
        let mut singles: Vec<PathEvaluator> =
            self.workers.drain(..).map(|s| PathEvaluator { workers: vec![s], setup: self.setup.clone() }).collect();
        let done: Vec<Vec<(usize, Result<T>)>> = singles
            .par_iter_mut()
            .map(|ev| {
                let mut done = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next();
                    let Some((i, item)) = next else { break };
                    let r = f(ev, item);
                    let failed = r.is_err();
                    done.push((i, r));
                    if failed {
                        break;
                    }
                }
                done
            })
            .collect();
        self.workers = singles.into_iter().flat_map(|s| s.workers).collect();
        let mut out: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
        for (i, r) in done.into_iter().flatten() {
            out[i] = Some(r);
        }
        // Items are handed out in order and a set stops only at its own error, so an error comes
        // before any item that no set took.
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::invalid("path evaluation", "a volume was not evaluated"))))
            .collect()
    }

    /// Runs `f` on every tile batch, batch `b` on worker `b % workers`, the workers at once; results in
    /// batch order.
    fn on_batches<R: Send>(
        &mut self,
        batches: usize,
        f: impl Fn(&mut Sessions, usize) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let w = self.workers.len();
        if w == 1 || batches == 1 {
            return (0..batches).map(|b| f(&mut self.workers[0], b)).collect();
        }
        let per_worker: Vec<Result<Vec<R>>> = self
            .workers
            .par_iter_mut()
            .enumerate()
            .map(|(k, sessions)| (k..batches).step_by(w).map(|b| f(sessions, b)).collect())
            .collect();
        let mut per_worker: Vec<std::vec::IntoIter<R>> =
            per_worker.into_iter().map(|r| r.map(Vec::into_iter)).collect::<Result<_>>()?;
        Ok((0..batches).map(|b| per_worker[b % w].next().expect("one result per batch")).collect())
    }

    /// One segment on every batch of features.
    fn run_segment(&mut self, seg: Segment, inputs: &[Array5<f32>]) -> Result<Vec<Array5<f32>>> {
        self.on_batches(inputs.len(), |s, b| s.run_segment(seg, inputs[b].view()))
    }

    /// Tiles a normalised volume and runs the stem on every tile.
    pub fn prepare(&mut self, image: &Array3<f32>, pad_value: f32, labels: Option<Array3<u8>>) -> Result<Prepared> {
        let shape: [usize; 3] = image.dim().into();
        if let Some(l) = labels.as_ref().filter(|l| l.dim() != image.dim()) {
            // Scoring reads labels voxel for voxel beside the image's blended prediction.
            return Err(Error::invalid("labels", format!("shape {:?} differs from the image's {shape:?}", l.dim())));
        }
        let padded = pad_to_patch(image.clone(), self.setup.window.patch, pad_value);
        let padded_shape: [usize; 3] = padded.dim().into();
        let p = self.setup.window.patch;
        let batches: Vec<Vec<[usize; 3]>> =
            self.setup.window.tiles(padded_shape).chunks(self.setup.tile_batch).map(|c| c.to_vec()).collect();
        let stem = self.on_batches(batches.len(), |s, b| {
            s.run_segment(Segment::Stem, batch_of_tiles(&padded.view(), &batches[b], p).view())
        })?;
        let coverage = Coverage::new(&self.setup.window, padded_shape, &batches.concat());
        Ok(Prepared {
            shape,
            coverage,
            batches,
            stem: Arc::new(stem),
            labels,
            scored: Mutex::default(),
            skip_parts: SkipParts::new(self.setup.skip_part_bytes.clone(), SKIP_PART_BYTES),
        })
    }

    /// Outcomes of `masks` (in the given order) on a prepared volume. Without predictions, paths
    /// already scored on the volume are not run again.
    pub fn evaluate(&mut self, prep: &Prepared, masks: &[Vec<bool>], keep_predictions: bool) -> Result<Vec<Outcome>> {
        let mut out: Vec<Option<Outcome>> = vec![None; masks.len()];
        if !keep_predictions {
            let scored = prep.scored();
            for (o, m) in out.iter_mut().zip(masks) {
                *o = scored.get(m).cloned();
            }
        }
        let mut order: Vec<usize> = (0..masks.len()).filter(|&i| out[i].is_none()).collect();
        order.sort_by_key(|&i| mask_key(&masks[i]));
        if !keep_predictions {
            order.dedup_by(|a, b| masks[*a] == masks[*b]);
        }
        // stack[d] = features of every batch after the first d blocks of the current path.
        let mut stack: Vec<PerBatch> = vec![prep.stem.clone()];
        let mut current: Vec<bool> = Vec::new();
        for i in order {
            let m = &masks[i];
            let shared = current.iter().zip(m).take_while(|(a, b)| a == b).count();
            stack.truncate(shared + 1);
            for (n, &keep) in m.iter().enumerate().skip(shared) {
                let prev = stack[n].clone();
                let next = if keep || self.setup.has_shortcut[n] {
                    let seg = if keep { Segment::Block(n) } else { Segment::Shortcut(n) };
                    Arc::new(self.run_segment(seg, &prev)?)
                } else {
                    prev // dropped identity block: nothing to compute
                };
                stack.push(next);
            }
            current = m.clone();
            // The skip decoder reads the features after block `after`: stack[after + 1].
            let low = match &self.setup.low_level {
                Some(l) if self.setup.split_head => {
                    Some(HeadLow::SkipPart(self.skip_part(prep, &m[..=l.after_block], &stack[l.after_block + 1])?))
                }
                Some(l) => Some(HeadLow::Features(stack[l.after_block + 1].clone())),
                None => None,
            };
            let outcome = self.finish(prep, &stack[m.len()], low.as_ref(), keep_predictions)?;
            prep.scored().insert(m.clone(), Outcome { prediction: None, ..outcome.clone() });
            out[i] = Some(outcome);
        }
        // Repeated masks were run once: the others take the stored outcome.
        let scored = prep.scored();
        Ok(out.into_iter().zip(masks).map(|(o, m)| o.unwrap_or_else(|| scored[m].clone())).collect())
    }

    /// The skip parts of the low-level `features` that the blocks `prefix` made, remembered on the
    /// volume.
    fn skip_part(&mut self, prep: &Prepared, prefix: &[bool], features: &PerBatch) -> Result<PerBatch> {
        if let Some(parts) = prep.skip_parts.get(prefix) {
            return Ok(parts);
        }
        let parts = Arc::new(self.on_batches(features.len(), |s, b| s.run_skip_part(features[b].view()))?);
        prep.skip_parts.keep(prefix, &parts);
        Ok(parts)
    }

    /// The head on every batch, the tiles blended, and the labels scored.
    fn finish(
        &mut self,
        prep: &Prepared,
        features: &[Array5<f32>],
        low: Option<&HeadLow>,
        keep_prediction: bool,
    ) -> Result<Outcome> {
        let head = |s: &mut Sessions, b: usize, f: &mut dyn FnMut(ArrayView5<f32>)| -> Result<()> {
            match low {
                Some(HeadLow::SkipPart(parts)) => s.run_head_after_skip_with(features[b].view(), parts[b].view(), f),
                Some(HeadLow::Features(l)) => s.run_head_with(features[b].view(), Some(l[b].view()), f),
                None => s.run_head_with(features[b].view(), None, f),
            }
        };
        let mut sum = prep.coverage.sum(self.setup.activation.channels());
        if let [sessions] = self.workers.as_mut_slice() {
            // One set: each batch's probabilities are blended straight from ONNX Runtime's buffer.
            for (b, origins) in prep.batches.iter().enumerate() {
                head(sessions, b, &mut |p| {
                    for (j, &t) in origins.iter().enumerate() {
                        prep.coverage.add(&mut sum, t, p.index_axis(Axis(0), j));
                    }
                })?;
            }
        } else {
            let probs = self.on_batches(features.len(), |s, b| {
                let mut probs = None;
                head(s, b, &mut |p| probs = Some(p.to_owned()))?;
                probs.ok_or_else(|| Error::invalid("head", "no probabilities"))
            })?;
            for (origins, p) in prep.batches.iter().zip(&probs) {
                for (j, &t) in origins.iter().enumerate() {
                    prep.coverage.add(&mut sum, t, p.index_axis(Axis(0), j));
                }
            }
        }
        let (activation, threshold) = (self.setup.activation, self.setup.threshold);
        if let (Some(truth), Activation::Sigmoid, false) = (&prep.labels, activation, keep_prediction) {
            let a = score_foreground(&sum, prep.coverage.weight(), threshold, truth);
            return Ok(Outcome { accuracy: a.accuracy(), dice: a.dice(), prediction: None });
        }
        let probs = prep.coverage.finish(sum, prep.shape);
        let pred = crate::labels::from_probabilities(&probs, activation, threshold);
        let (accuracy, dice) = match &prep.labels {
            Some(l) => crate::labels::accuracy_and_dice(&pred, l),
            None => (f64::NAN, f64::NAN),
        };
        Ok(Outcome { accuracy, dice, prediction: keep_prediction.then_some(pred) })
    }
}

/// The foreground labels of a blended sigmoid sum `[1, D', H', W']` (padded) against `truth`
/// `[D, H, W]`, counted row by row without a probability or label volume: the labels
/// [`crate::labels::from_probabilities`] gives for [`Coverage::finish`]'s probabilities, voxel for voxel.
fn score_foreground(sum: &Array4<f32>, weight: &Array3<f32>, threshold: f32, truth: &Array3<u8>) -> Agreement {
    let truth = truth.as_standard_layout();
    let [d, h, w] = [0, 1, 2].map(|a| truth.shape()[a]);
    let sum = sum.index_axis(Axis(0), 0);
    let mut agreement = Agreement::default();
    let mut labels = vec![0u8; w];
    for z in 0..d {
        for y in 0..h {
            let (s, wt, t) = (sum.slice(s![z, y, ..w]), weight.slice(s![z, y, ..w]), truth.slice(s![z, y, ..]));
            for ((l, &s), &wt) in labels.iter_mut().zip(s.iter()).zip(wt.iter()) {
                *l = u8::from(blended(s, wt) >= threshold);
            }
            agreement.add(&labels, t.as_slice().unwrap_or_default());
        }
    }
    agreement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(values: usize) -> PerBatch {
        Arc::new(vec![Array5::zeros((1, 1, 1, 1, values))])
    }

    #[test]
    fn skip_parts_stay_within_the_shared_budget_giving_up_the_least_recent_first() {
        let used = Arc::new(AtomicUsize::new(0));
        // Two volumes sharing 100 bytes: 25 f32 values.
        let (a, b) = (SkipParts::new(used.clone(), 100), SkipParts::new(used.clone(), 100));
        a.keep(&[true], &parts(10));
        a.keep(&[false], &parts(10));
        assert_eq!(used.load(Ordering::Relaxed), 80);
        // Used most recently: [true], so [false] goes when room is needed.
        assert!(a.get(&[true]).is_some());
        a.keep(&[true, true], &parts(6));
        assert!(a.get(&[false]).is_none() && a.get(&[true]).is_some() && a.get(&[true, true]).is_some());
        assert_eq!(used.load(Ordering::Relaxed), 64);
        // Another volume cannot take what this one holds: with nothing of its own to give up, it keeps
        // only what fits.
        b.keep(&[true], &parts(10));
        assert!(b.get(&[true]).is_none());
        b.keep(&[false], &parts(9));
        assert!(b.get(&[false]).is_some());
        assert_eq!(used.load(Ordering::Relaxed), 100);
        // A volume dropped returns its bytes.
        drop(a);
        assert_eq!(used.load(Ordering::Relaxed), 36);
        b.keep(&[true], &parts(15));
        assert!(b.get(&[true]).is_some() && b.get(&[false]).is_some());
        assert_eq!(used.load(Ordering::Relaxed), 96);
    }
}
