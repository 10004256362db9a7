//! Evaluating many block paths on one volume, sharing work between paths: the stem runs once, and
//! paths are visited in lexicographic order so that each reuses the block outputs of the longest
//! prefix it shares with the previous one. Policy rewards and the heuristic study both need hundreds
//! of paths per volume; without sharing they would cost hundreds of full forward passes.

use std::rc::Rc;

use ndarray::{Array3, Array5, Axis};

use crate::deploy::chain::Segment;
use crate::deploy::Sessions;
use crate::error::Result;
use crate::input::bundle::Activation;
use crate::input::window::{batch_of_tiles, pad_to_patch, Accumulator, WindowConfig};

/// A volume ready for path evaluation: tiles extracted and the stem already run.
pub struct Prepared {
    shape: [usize; 3],
    padded_shape: [usize; 3],
    /// Tile origins, grouped in batches.
    batches: Vec<Vec<[usize; 3]>>,
    /// Stem output per batch.
    stem: Rc<Vec<Array5<f32>>>,
    /// Labels (mapped) on the network grid, for scoring; may be empty.
    labels: Option<Array3<u8>>,
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
pub struct PathEvaluator<'s> {
    sessions: &'s mut Sessions,
    window: WindowConfig,
    tile_batch: usize,
    activation: Activation,
    threshold: f32,
}

fn mask_key(m: &[bool]) -> Vec<u8> {
    m.iter().map(|&k| u8::from(!k)).collect() // kept first: the all-kept prefix is shared most
}

impl<'s> PathEvaluator<'s> {
    /// An evaluator over `sessions` with the bundle's window, activation and threshold.
    pub fn new(
        sessions: &'s mut Sessions,
        window: WindowConfig,
        tile_batch: usize,
        activation: Activation,
        threshold: f32,
    ) -> Self {
        PathEvaluator { sessions, window, tile_batch: tile_batch.max(1), activation, threshold }
    }

    /// Tiles a normalised volume and runs the stem on every tile.
    pub fn prepare(&mut self, image: &Array3<f32>, pad_value: f32, labels: Option<Array3<u8>>) -> Result<Prepared> {
        let shape: [usize; 3] = image.dim().into();
        let padded = pad_to_patch(image.clone(), self.window.patch, pad_value);
        let padded_shape: [usize; 3] = padded.dim().into();
        let p = self.window.patch;
        let batches: Vec<Vec<[usize; 3]>> =
            self.window.tiles(padded_shape).chunks(self.tile_batch).map(|c| c.to_vec()).collect();
        let mut stem = Vec::with_capacity(batches.len());
        for b in &batches {
            stem.push(self.sessions.run_segment(Segment::Stem, batch_of_tiles(&padded.view(), b, p).view())?);
        }
        Ok(Prepared { shape, padded_shape, batches, stem: Rc::new(stem), labels })
    }

    /// Outcomes of `masks` (in the given order) on a prepared volume.
    pub fn evaluate(&mut self, prep: &Prepared, masks: &[Vec<bool>], keep_predictions: bool) -> Result<Vec<Outcome>> {
        let mut order: Vec<usize> = (0..masks.len()).collect();
        order.sort_by_key(|&i| mask_key(&masks[i]));
        let mut out: Vec<Option<Outcome>> = vec![None; masks.len()];
        // stack[d] = features of every batch after the first d blocks of the current path.
        let mut stack: Vec<Rc<Vec<Array5<f32>>>> = vec![prep.stem.clone()];
        let mut current: Vec<bool> = Vec::new();
        for i in order {
            let m = &masks[i];
            let shared = current.iter().zip(m).take_while(|(a, b)| a == b).count();
            stack.truncate(shared + 1);
            for (n, &keep) in m.iter().enumerate().skip(shared) {
                let prev = stack[n].clone();
                let next = if keep || self.sessions.shortcuts[n].is_some() {
                    let seg = if keep { Segment::Block(n) } else { Segment::Shortcut(n) };
                    Rc::new(prev.iter().map(|x| self.sessions.run_segment(seg, x.view())).collect::<Result<Vec<_>>>()?)
                } else {
                    prev // dropped identity block: nothing to compute
                };
                stack.push(next);
            }
            current = m.clone();
            // The skip decoder reads the features after block `after`: stack[after + 1].
            let low = self.sessions.low_level.as_ref().map(|l| stack[l.after_block + 1].clone());
            out[i] = Some(self.finish(prep, &stack[m.len()], low.as_deref().map(Vec::as_slice), keep_predictions)?);
        }
        Ok(out.into_iter().map(|o| o.expect("every mask evaluated")).collect())
    }

    fn finish(
        &mut self,
        prep: &Prepared,
        features: &[Array5<f32>],
        low: Option<&[Array5<f32>]>,
        keep_prediction: bool,
    ) -> Result<Outcome> {
        let k = self.activation.channels();
        let mut acc = Accumulator::new(k, prep.padded_shape, &self.window);
        for (i, (b, f)) in prep.batches.iter().zip(features).enumerate() {
            let probs = self.sessions.run_head(f.view(), low.map(|l| l[i].view()))?;
            for (j, &t) in b.iter().enumerate() {
                acc.add(t, probs.index_axis(Axis(0), j));
            }
        }
        let probs = acc.finish(prep.shape);
        let pred = crate::labels::from_probabilities(&probs, self.activation, self.threshold);
        let (accuracy, dice) = match &prep.labels {
            Some(l) => crate::labels::accuracy_and_dice(&pred, l),
            None => (f64::NAN, f64::NAN),
        };
        Ok(Outcome { accuracy, dice, prediction: keep_prediction.then_some(pred) })
    }
}
