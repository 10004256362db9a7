//! Sliding-window tiling: where tiles go, how overlapping tile predictions are blended, and the
//! accumulator that stitches them into a whole-volume prediction with memory bounded by the volume.

use ndarray::{s, Array3, Array4, ArrayView3, ArrayView4};
use rayon::prelude::*;

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
///
/// The summed weight is not kept beside the sum: it depends on the tiles' places only, and
/// [`Accumulator::map_blended`] makes it one row at a time in a row-sized buffer, adding the tiles'
/// weight rows in the order the tiles were added, so every voxel's weight is the same float sum,
/// bit for bit, as adding each tile's weights into a weight volume ([`Coverage`] does that). Why: that
/// weight volume was a second 230 MB pass per tile on a 220×512×512 volume.
#[derive(Debug)]
pub struct Accumulator {
    sum: Array4<f32>,
    tile_weight: Array3<f32>,
    origins: Vec<[usize; 3]>,
}

impl Accumulator {
    /// An empty accumulator for `channels` outputs over a volume of `shape`.
    pub fn new(channels: usize, shape: [usize; 3], config: &WindowConfig) -> Self {
        let [d, h, w] = shape;
        let sum = Array4::from_shape_vec([channels, d, h, w], written_zeros(channels * d * h * w));
        Accumulator {
            sum: sum.expect("length is the product of the shape"),
            tile_weight: tile_weights(config),
            origins: Vec::new(),
        }
    }

    /// Adds one tile's prediction `[C, d, h, w]` at `origin`.
    pub fn add(&mut self, origin: [usize; 3], prediction: ArrayView4<f32>) {
        add_weighted(&mut self.sum, &self.tile_weight, origin, prediction);
        self.origins.push(origin);
    }

    /// Adds consecutive tiles' predictions, as many [`Accumulator::add`]s in their order and with the
    /// same result, bit for bit. Tiles of one row of the window (the same depth and height origin)
    /// are added row by row of the volume, every tile's segment while the row is in cache: on a
    /// 220×512×512 volume, where ten tiles share each row, this halves the blending's memory traffic.
    pub fn add_tiles(&mut self, tiles: &[([usize; 3], ArrayView4<f32>)]) {
        let mut start = 0;
        while start < tiles.len() {
            let row = [tiles[start].0[0], tiles[start].0[1]];
            let len = tiles[start..].iter().take_while(|(o, _)| [o[0], o[1]] == row).count();
            self.add_tile_row(&tiles[start..start + len]);
            start += len;
        }
    }

    /// [`Accumulator::add_tiles`] for tiles that share their depth and height origin: for each of a
    /// voxel's tiles, its contribution arrives in the tiles' order, as with one `add` after another.
    fn add_tile_row(&mut self, tiles: &[([usize; 3], ArrayView4<f32>)]) {
        let contiguous = tiles.iter().all(|(_, p)| p.is_standard_layout());
        let (Some(tw), true) = (self.tile_weight.as_slice(), contiguous) else {
            tiles.iter().for_each(|(o, p)| self.add(*o, p.view()));
            return;
        };
        let [pd, ph, pw] = [0, 1, 2].map(|a| self.tile_weight.shape()[a]);
        let [c, d, h, w] = [0, 1, 2, 3].map(|a| self.sum.shape()[a]);
        let (oz, oy) = (tiles[0].0[0], tiles[0].0[1]);
        let preds: Vec<&[f32]> = tiles.iter().filter_map(|(_, p)| p.as_slice()).collect();
        let sum = self.sum.as_slice_mut().expect("the sum is allocated in standard layout");
        for k in 0..c {
            for z in 0..pd {
                for y in 0..ph {
                    let row = ((k * d + oz + z) * h + oy + y) * w;
                    let (weights, at) = (&tw[(z * ph + y) * pw..][..pw], ((k * pd + z) * ph + y) * pw);
                    for ((o, _), pred) in tiles.iter().zip(&preds) {
                        add_row(&mut sum[row + o[2]..][..pw], &pred[at..][..pw], weights);
                    }
                }
            }
        }
        self.origins.extend(tiles.iter().map(|(o, _)| *o));
    }

    /// The blended prediction `[C, D, H, W]`, cropped to `shape` (the unpadded volume).
    pub fn finish(self, shape: [usize; 3]) -> Array4<f32> {
        let weights = RowWeights::new(&self.tile_weight, &self.origins, self.padded_shape());
        let [d, h, w] = shape;
        let mut out = self.sum.slice_move(s![.., ..d, ..h, ..w]);
        let mut row = vec![0.0f32; weights.width];
        for z in 0..d {
            for y in 0..h {
                weights.fill(z, y, &mut row);
                for mut channel in out.outer_iter_mut() {
                    let mut values = channel.slice_mut(s![z, y, ..]);
                    values.iter_mut().zip(&row).for_each(|(v, &wt)| *v = blended(*v, wt));
                }
            }
        }
        out
    }

    fn padded_shape(&self) -> [usize; 3] {
        let s = self.sum.shape();
        [s[1], s[2], s[3]]
    }

    /// `f` of every voxel's [`blended`] values (one per channel), cropped to `shape`: the runtime's
    /// labels come straight from the sum, without a probability volume.
    pub fn map_blended<T: Copy + Default + Send + Sync>(
        &self,
        shape: [usize; 3],
        f: impl Fn(&[f32]) -> T + Sync,
    ) -> Array3<T> {
        let weights = RowWeights::new(&self.tile_weight, &self.origins, self.padded_shape());
        let channels = self.sum.len_of(ndarray::Axis(0));
        let [d, h, w] = shape;
        let mut out = vec![T::default(); d * h * w];
        out.par_chunks_mut(w.max(1)).enumerate().for_each_init(
            || (vec![0.0f32; weights.width], vec![0.0f32; channels]),
            |(row, values), (i, out)| {
                let (z, y) = (i / h, i % h);
                weights.fill(z, y, row);
                let sums: Vec<_> = (0..channels).map(|k| self.sum.slice(s![k, z, y, ..w])).collect();
                for (x, o) in out.iter_mut().enumerate() {
                    for (v, sum) in values.iter_mut().zip(&sums) {
                        *v = blended(sum[x], row[x]);
                    }
                    *o = f(values);
                }
            },
        );
        Array3::from_shape_vec(shape, out).expect("one value per voxel")
    }
}

/// The summed tile weight of a (padded) volume, one row at a time: per row `(z, y)`, the tiles that
/// cover it in the order they were added, each adding its weight row over its x range.
struct RowWeights<'a> {
    tile_weight: &'a Array3<f32>,
    origins: &'a [[usize; 3]],
    /// Per z, then per y, the indices (into `origins`) of the tiles covering it, in added order.
    by_z: Vec<Vec<usize>>,
    width: usize,
}

impl<'a> RowWeights<'a> {
    fn new(tile_weight: &'a Array3<f32>, origins: &'a [[usize; 3]], shape: [usize; 3]) -> Self {
        let [pd, _, _] = [0, 1, 2].map(|a| tile_weight.shape()[a]);
        let mut by_z = vec![Vec::new(); shape[0]];
        for (i, o) in origins.iter().enumerate() {
            for list in by_z.iter_mut().skip(o[0]).take(pd) {
                list.push(i);
            }
        }
        RowWeights { tile_weight, origins, by_z, width: shape[2] }
    }

    /// The summed weight of row `(z, y)` into `row` (the padded width).
    fn fill(&self, z: usize, y: usize, row: &mut [f32]) {
        row.iter_mut().for_each(|v| *v = 0.0);
        let ph = self.tile_weight.shape()[1];
        for &i in &self.by_z[z] {
            let o = self.origins[i];
            if y < o[1] || y >= o[1] + ph {
                continue;
            }
            let t = self.tile_weight.slice(s![z - o[0], y - o[1], ..]);
            let seg = &mut row[o[2]..o[2] + t.len()];
            seg.iter_mut().zip(t.iter()).for_each(|(a, &t)| *a += t);
        }
    }
}

/// `n` zeros, written rather than allocated zeroed. Why: a zeroed allocation maps every page to the
/// kernel's shared zero page, and blending's first `+=` on each page then faults twice, the second
/// time with a TLB shoot-down across every core the process runs on (where the network threads are):
/// on a 220×512×512 volume that was most of the 2.3 s blending took beside a 15 s network.
fn written_zeros(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0.0);
    v
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

/// Tiles at least this large are blended on the rayon pool; smaller ones on the calling thread, where
/// the work is a few hundred microseconds and waking the pool (beside ONNX Runtime's spinning threads)
/// cost more than it saved: on the demo's 32×96×96 tiles, blending a 220×512×512 volume took 2.3 s in
/// parallel and 0.3 s row by row on one thread.
const PARALLEL_BLEND_VOXELS: usize = 1 << 21;

/// `acc[i] += pred[i] · weight[i]` over one row.
fn add_row(acc: &mut [f32], pred: &[f32], weight: &[f32]) {
    for ((a, &p), &w) in acc.iter_mut().zip(pred).zip(weight) {
        *a += p * w;
    }
}

/// `acc += pred · weight` over 3D views of one shape, row by row (contiguous rows vectorise; ndarray's
/// element-wise `Zip` over strided 3D views did not).
fn add_product(mut acc: ndarray::ArrayViewMut3<f32>, pred: ndarray::ArrayView3<f32>, weight: ndarray::ArrayView3<f32>) {
    let rows = ndarray::Zip::from(acc.rows_mut()).and(pred.rows()).and(weight.rows());
    let row = |mut a: ndarray::ArrayViewMut1<f32>, p: ndarray::ArrayView1<f32>, w: ndarray::ArrayView1<f32>| match (
        a.as_slice_mut(),
        p.as_slice(),
        w.as_slice(),
    ) {
        (Some(a), Some(p), Some(w)) => add_row(a, p, w),
        _ => ndarray::Zip::from(&mut a).and(&p).and(&w).for_each(|a, &p, &w| *a += p * w),
    };
    if weight.len() >= PARALLEL_BLEND_VOXELS {
        rows.par_for_each(row);
    } else {
        rows.for_each(row);
    }
}

/// `sum += prediction · tile_weight` over the tile at `origin`, per channel.
fn add_weighted(sum: &mut Array4<f32>, tile_weight: &Array3<f32>, origin: [usize; 3], prediction: ArrayView4<f32>) {
    let [d, h, w] = [0, 1, 2].map(|a| tile_weight.shape()[a]);
    let region = s![origin[0]..origin[0] + d, origin[1]..origin[1] + h, origin[2]..origin[2] + w];
    for (c, pred) in prediction.outer_iter().enumerate() {
        let mut acc = sum.index_axis_mut(ndarray::Axis(0), c);
        add_product(acc.slice_mut(region), pred, tile_weight.view());
    }
}

/// `weight += tile_weight` over the tile at `origin`.
fn add_weight(weight: &mut Array3<f32>, tile_weight: &Array3<f32>, origin: [usize; 3]) {
    let [d, h, w] = [0, 1, 2].map(|a| tile_weight.shape()[a]);
    let region = s![origin[0]..origin[0] + d, origin[1]..origin[1] + h, origin[2]..origin[2] + w];
    let mut wsum = weight.slice_mut(region);
    let rows = ndarray::Zip::from(wsum.rows_mut()).and(tile_weight.rows());
    rows.for_each(|mut a, t| match (a.as_slice_mut(), t.as_slice()) {
        (Some(a), Some(t)) => a.iter_mut().zip(t).for_each(|(a, &t)| *a += t),
        _ => ndarray::Zip::from(&mut a).and(&t).for_each(|a, &t| *a += t),
    });
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
///
/// Built row by row into an uninitialised buffer: a zeroed batch (then overwritten) cost a 1.5 GB
/// memset over a 220×512×512 volume's 1300 tiles.
pub fn batch_of_tiles(volume: &ArrayView3<f32>, origins: &[[usize; 3]], patch: [usize; 3]) -> ndarray::Array5<f32> {
    let [d, h, w] = patch;
    let mut values = Vec::with_capacity(origins.len() * d * h * w);
    for &t in origins {
        let tile = volume.slice(s![t[0]..t[0] + d, t[1]..t[1] + h, t[2]..t[2] + w]);
        for row in tile.rows() {
            match row.as_slice() {
                Some(r) => values.extend_from_slice(r),
                None => values.extend(row.iter().copied()),
            }
        }
    }
    ndarray::Array5::from_shape_vec((origins.len(), 1, d, h, w), values).expect("one value per tile voxel")
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
        let mut slot = slot.index_axis_mut(ndarray::Axis(0), 0);
        // Row by row: contiguous rows copy as memcpy, where an element-wise assign of the strided
        // region took as long as blending it.
        ndarray::Zip::from(slot.rows_mut()).and(volume.slice(region).rows()).for_each(|mut to, from| {
            match (to.as_slice_mut(), from.as_slice()) {
                (Some(to), Some(from)) => to.copy_from_slice(from),
                _ => to.assign(&from),
            }
        });
    }
}

/// A normalised image ready to be cut into tiles: padded at the far end up to a tile where it is
/// smaller (else borrowed, no copy), with the window's tile origins.
pub struct Tiling<'a> {
    padded: ndarray::CowArray<'a, f32, ndarray::Ix3>,
    /// Tile origins, in the window's order (the order tiles are run and blended in).
    pub origins: Vec<[usize; 3]>,
    /// The image's own shape, to crop the blended result back to.
    pub shape: [usize; 3],
}

impl<'a> Tiling<'a> {
    /// The tiling of `image` under `window`, padding with `pad_value`.
    pub fn new(image: &'a Array3<f32>, pad_value: f32, window: &WindowConfig) -> Self {
        let shape: [usize; 3] = image.dim().into();
        let patch = window.patch;
        let padded: ndarray::CowArray<f32, ndarray::Ix3> = if (0..3).any(|a| shape[a] < patch[a]) {
            pad_to_patch(image.clone(), patch, pad_value).into()
        } else {
            image.view().into()
        };
        let origins = window.tiles(padded.dim().into());
        Tiling { padded, origins, shape }
    }

    /// The (padded) volume the tiles are cut from.
    pub fn padded(&self) -> ArrayView3<'_, f32> {
        self.padded.view()
    }

    /// Shape of the padded volume.
    pub fn padded_shape(&self) -> [usize; 3] {
        self.padded.dim().into()
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
    let tiling = Tiling::new(image, pad_value, window);
    let patch = window.patch;
    let padded = tiling.padded();
    let mut acc = Accumulator::new(engine.channels(), tiling.padded_shape(), window);
    let tiles = &tiling.origins;
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
    Ok((acc.finish(tiling.shape), tiles.len()))
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
