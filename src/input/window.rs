//! Sliding-window tiling: where tiles go, how overlapping tile predictions are blended, and the
//! accumulator that stitches them into a whole-volume prediction with memory bounded by the volume.

use ndarray::{s, Array3, Array4, ArrayView3, ArrayView4};

use crate::error::Result;

pub use autopath_bundle::{Blend, WindowConfig};

/// Pads a volume at the far end of each axis up to at least `patch`, with `value`. Returns it unchanged
/// (no copy) when it is large enough.
pub fn pad_to_patch(data: Array3<f32>, patch: [usize; 3], value: f32) -> Array3<f32> {
    let shape: [usize; 3] = data.dim().into();
    if (0..3).all(|a| shape[a] >= patch[a]) {
        return data;
    }
    let padded: [usize; 3] = std::array::from_fn(|a| shape[a].max(patch[a]));
    let mut out = Array3::from_elem(padded, value);
    out.slice_mut(s![..shape[0], ..shape[1], ..shape[2]]).assign(&data);
    out
}

/// Copies the tile at `origin` out of a (padded) volume.
pub fn extract(volume: &ArrayView3<f32>, origin: [usize; 3], patch: [usize; 3]) -> Array3<f32> {
    volume
        .slice(s![origin[0]..origin[0] + patch[0], origin[1]..origin[1] + patch[1], origin[2]..origin[2] + patch[2]])
        .to_owned()
}

/// Weighted sum of tile predictions over a whole (padded) volume; memory is one volume per channel,
/// whatever the number of tiles.
#[derive(Debug)]
pub struct Accumulator {
    sum: Array4<f32>,
    weight: Array3<f32>,
    tile_weight: Array3<f32>,
}

impl Accumulator {
    /// An empty accumulator for `channels` outputs over a volume of `shape`.
    pub fn new(channels: usize, shape: [usize; 3], config: &WindowConfig) -> Self {
        Accumulator {
            sum: Array4::zeros([channels, shape[0], shape[1], shape[2]]),
            weight: Array3::zeros(shape),
            tile_weight: tile_weights(config),
        }
    }

    /// Adds one tile's prediction `[C, d, h, w]` at `origin`.
    pub fn add(&mut self, origin: [usize; 3], prediction: ArrayView4<f32>) {
        add_weighted(&mut self.sum, &self.tile_weight, origin, prediction);
        add_weight(&mut self.weight, &self.tile_weight, origin);
    }

    /// The blended prediction `[C, D, H, W]`, cropped to `shape` (the unpadded volume).
    pub fn finish(self, shape: [usize; 3]) -> Array4<f32> {
        divided(self.sum, &self.weight, shape)
    }
}

/// The weighted sum of the tile predictions over the voxel's summed weight (the sum itself where no
/// tile reached the voxel): the one blending rule of [`Accumulator`] and [`Coverage`].
pub fn blended(sum: f32, weight: f32) -> f32 {
    if weight > 0.0 {
        sum / weight
    } else {
        sum
    }
}

/// `sum += prediction · tile_weight` over the tile at `origin`, per channel.
fn add_weighted(sum: &mut Array4<f32>, tile_weight: &Array3<f32>, origin: [usize; 3], prediction: ArrayView4<f32>) {
    let [d, h, w] = [0, 1, 2].map(|a| tile_weight.shape()[a]);
    let region = s![origin[0]..origin[0] + d, origin[1]..origin[1] + h, origin[2]..origin[2] + w];
    // In parallel over voxels: at the paper's tile one add is 3 M multiply-adds per channel, and a
    // single thread blending 8 tiles took longer than the network on a GPU.
    for (c, pred) in prediction.outer_iter().enumerate() {
        let mut acc = sum.index_axis_mut(ndarray::Axis(0), c);
        let mut acc = acc.slice_mut(region);
        ndarray::Zip::from(&mut acc).and(&pred).and(tile_weight).par_for_each(|a, &p, &wt| *a += p * wt);
    }
}

/// `weight += tile_weight` over the tile at `origin`.
fn add_weight(weight: &mut Array3<f32>, tile_weight: &Array3<f32>, origin: [usize; 3]) {
    let [d, h, w] = [0, 1, 2].map(|a| tile_weight.shape()[a]);
    let region = s![origin[0]..origin[0] + d, origin[1]..origin[1] + h, origin[2]..origin[2] + w];
    let mut wsum = weight.slice_mut(region);
    ndarray::Zip::from(&mut wsum).and(tile_weight).par_for_each(|a, &wt| *a += wt);
}

/// Every channel of `sum` [`blended`] with `weight`, cropped to `shape`.
fn divided(mut sum: Array4<f32>, weight: &Array3<f32>, shape: [usize; 3]) -> Array4<f32> {
    for mut ch in sum.outer_iter_mut() {
        ndarray::Zip::from(&mut ch).and(weight).par_for_each(|v, &w| *v = blended(*v, w));
    }
    sum.slice_move(s![.., ..shape[0], ..shape[1], ..shape[2]])
}

/// One volume's tiles and their blending weights, computed once for many predictions over the same
/// tiles. Why: the path evaluator blends hundreds of paths per volume, and recomputing the Gaussian
/// tile weights and their per-voxel sum for each took 4 % of `eval`'s samples.
pub struct Coverage {
    tile_weight: Array3<f32>,
    weight: Array3<f32>,
}

impl Coverage {
    /// The blending of tiles at `origins` over a (padded) volume of `shape`.
    pub fn new(config: &WindowConfig, shape: [usize; 3], origins: &[[usize; 3]]) -> Self {
        let tile_weight = tile_weights(config);
        let mut weight = Array3::zeros(shape);
        for &o in origins {
            add_weight(&mut weight, &tile_weight, o);
        }
        Coverage { tile_weight, weight }
    }

    /// An empty weighted sum `[channels, D, H, W]` for [`Self::add`].
    pub fn sum(&self, channels: usize) -> Array4<f32> {
        let [d, h, w] = [0, 1, 2].map(|a| self.weight.shape()[a]);
        Array4::zeros([channels, d, h, w])
    }

    /// Adds one tile's prediction `[C, d, h, w]` at `origin` (one of the coverage's) to `sum`.
    pub fn add(&self, sum: &mut Array4<f32>, origin: [usize; 3], prediction: ArrayView4<f32>) {
        add_weighted(sum, &self.tile_weight, origin, prediction);
    }

    /// The summed weight of the tiles at every voxel.
    pub fn weight(&self) -> &Array3<f32> {
        &self.weight
    }

    /// The blended prediction `[C, D, H, W]`, cropped to `shape`: what an [`Accumulator`] fed the
    /// same tiles in the same order gives.
    pub fn finish(&self, sum: Array4<f32>, shape: [usize; 3]) -> Array4<f32> {
        divided(sum, &self.weight, shape)
    }
}

/// Turns a batch of tiles `[B, 1, d, h, w]` into class probabilities `[B, K, d, h, w]`: the Candle
/// segmenter on a path, the ONNX Runtime chain on a path, or `full.onnx`. [`slide`] is the one
/// sliding-window loop all three run through, so training's validation, the study and the runtime tile,
/// batch and blend a volume identically.
pub trait TileEngine {
    /// Output classes K.
    fn channels(&self) -> usize;
    /// Probabilities `[B, K, d, h, w]` for a batch of tiles, handed to `sink` as a view: engines need
    /// not copy their output (ONNX Runtime's lives in its own buffer).
    fn run(&mut self, tiles: ndarray::ArrayView5<f32>, sink: &mut dyn FnMut(ndarray::ArrayView5<f32>)) -> Result<()>;
}

/// The tiles at `origins` of a (padded) volume as one batch `[B, 1, d, h, w]`.
pub fn batch_of_tiles(volume: &ArrayView3<f32>, origins: &[[usize; 3]], patch: [usize; 3]) -> ndarray::Array5<f32> {
    let mut batch = ndarray::Array5::<f32>::zeros((origins.len(), 1, patch[0], patch[1], patch[2]));
    fill_tiles(batch.view_mut(), volume, origins, patch);
    batch
}

/// Copies the tiles at `origins` into the first `origins.len()` slots of `batch`, straight from the
/// volume (no intermediate tile).
fn fill_tiles(
    mut batch: ndarray::ArrayViewMut5<f32>,
    volume: &ArrayView3<f32>,
    origins: &[[usize; 3]],
    patch: [usize; 3],
) {
    for (i, &t) in origins.iter().enumerate() {
        let region = s![t[0]..t[0] + patch[0], t[1]..t[1] + patch[1], t[2]..t[2] + patch[2]];
        let mut slot = batch.index_axis_mut(ndarray::Axis(0), i);
        slot.index_axis_mut(ndarray::Axis(0), 0).assign(&volume.slice(region));
    }
}

/// Class probabilities `[K, D, H, W]` of a normalised image `[D, H, W]`: padded up to the tile with
/// `pad_value`, cut into the window's tiles, run `tile_batch` at a time through `engine`, blended, and
/// cropped back. Also returns the number of tiles.
pub fn slide(
    engine: &mut dyn TileEngine,
    image: &Array3<f32>,
    pad_value: f32,
    window: &WindowConfig,
    tile_batch: usize,
) -> Result<(Array4<f32>, usize)> {
    let shape: [usize; 3] = image.dim().into();
    let patch = window.patch;
    // The image itself when it is at least a tile in every axis (no copy), else a padded copy.
    let padded_copy = (0..3).any(|a| shape[a] < patch[a]).then(|| pad_to_patch(image.clone(), patch, pad_value));
    let padded = padded_copy.as_ref().map_or_else(|| image.view(), |p| p.view());
    let pshape: [usize; 3] = padded.dim().into();
    let mut acc = Accumulator::new(engine.channels(), pshape, window);
    let tiles = window.tiles(pshape);
    let per_call = tile_batch.max(1).min(tiles.len().max(1));
    // One batch buffer for every call (the last, smaller chunk uses its first slots).
    let mut batch = ndarray::Array5::<f32>::zeros((per_call, 1, patch[0], patch[1], patch[2]));
    for chunk in tiles.chunks(per_call) {
        let mut slots = batch.slice_mut(s![..chunk.len(), .., .., .., ..]);
        fill_tiles(slots.view_mut(), &padded, chunk, patch);
        engine.run(slots.view(), &mut |probs| {
            for (i, &t) in chunk.iter().enumerate() {
                acc.add(t, probs.index_axis(ndarray::Axis(0), i));
            }
        })?;
    }
    Ok((acc.finish(shape), tiles.len()))
}

/// Per-voxel weight of a tile's prediction under `config`'s blending.
pub fn tile_weights(config: &WindowConfig) -> Array3<f32> {
    match config.blend {
        Blend::Constant => Array3::ones(config.patch),
        Blend::Gaussian { sigma_scale } => {
            let axis = |n: usize| -> Vec<f32> {
                let c = (n as f32 - 1.0) / 2.0;
                let sigma = (n as f32 * sigma_scale).max(1e-3);
                (0..n).map(|i| (-((i as f32 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect()
            };
            let (a, b, c) = (axis(config.patch[0]), axis(config.patch[1]), axis(config.patch[2]));
            let mut w = Array3::from_shape_fn(config.patch, |(z, y, x)| a[z] * b[y] * c[x]);
            let max = w.iter().copied().fold(0.0, f32::max);
            // Normalise, and keep a floor so no voxel is left with zero weight (nnU-Net does the same).
            let floor = w.iter().copied().filter(|v| *v > 0.0).fold(f32::INFINITY, f32::min) / max;
            w.mapv_inplace(|v| (v / max).max(floor).max(1e-6));
            w
        }
    }
}
