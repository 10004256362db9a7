//! Whole-volume segmentation with a bundle: the one core behind the batch CLI, the HTTP service and
//! the benchmark. Read → preprocess (the training code) → policy → sliding-window tiles through the
//! chain of kept blocks → blend → threshold → original grid → write.

use crate::input::preprocess::Preprocess;
use autopath_bundle::PathCost;
use std::path::Path;
use std::time::Instant;

use ndarray::{Array3, Array4};
use serde::Serialize;

use super::audit::{Audit, AuditOutcome, GuardOutcome};
use super::network::{Batching, Network, NetworkStats, Route, Stream, Ticket};
use super::session::{ExecutionProvider, SessionOptions, Sessions};
use crate::error::{Error, Result};
use crate::input::dicom::{write_seg, SegmentDescription};
use crate::input::preprocess::{resample_linear, Record};
use crate::input::source::{OutputType, Source};
use crate::input::volume::{write_label_map, ReadOptions, Volume};
use crate::input::window::{batch_of_tiles, Accumulator, Tiling, WindowConfig};
use autopath_bundle::{Bundle, PolicyEntry};

/// Which blocks to run.
#[derive(Debug, Clone, PartialEq)]
pub enum PathChoice {
    /// Ask the policy (the bundle's threshold, or this one).
    Auto {
        /// Override of the keep threshold.
        threshold: Option<f32>,
    },
    /// Every block.
    Full,
    /// A fixed mask, `1` = keep.
    Mask(Vec<bool>),
    /// Every block, through the monolithic `full.onnx` instead of the chain: the baseline `bench`
    /// measures against.
    FullGraph,
}

/// A mean spend per volume: of the full network's FLOPs (`--budget`, the paper's measure), or of its
/// measured time on the provider the bundle was calibrated on (`--time-budget`, with `compile --cost`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Fraction of the full network's FLOPs.
    Flops(f64),
    /// Fraction of the full network's measured time.
    Time(f64),
}

impl Budget {
    /// One budget from the two options; both is an error.
    pub fn from_options(flops: Option<f64>, time: Option<f64>) -> Result<Option<Budget>> {
        match (flops, time) {
            (Some(_), Some(_)) => Err(Error::request("budget", "give a FLOP budget or a time budget, not both")),
            (Some(f), None) => Ok(Some(Budget::Flops(f))),
            (None, Some(t)) => Ok(Some(Budget::Time(t))),
            (None, None) => Ok(None),
        }
    }
}

impl PathChoice {
    /// The choice a request makes: `path` with, for `auto`, a keep `threshold` or a FLOP `budget`
    /// turned into the bundle's calibrated threshold. The one reading of these options, for the CLI
    /// and the service alike.
    pub fn resolve(
        path: PathChoice,
        threshold: Option<f32>,
        budget: Option<Budget>,
        policy: Option<&PolicyEntry>,
    ) -> Result<PathChoice> {
        if let Some(t) = threshold.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(Error::request("threshold", format!("{t} is not in [0, 1]")));
        }
        let threshold = match (threshold, budget) {
            (Some(_), Some(_)) => {
                return Err(Error::request("budget", "give either a threshold or a budget, not both"))
            }
            (t, None) => t,
            (None, Some(b)) => {
                let policy =
                    policy.ok_or_else(|| Error::request("budget", "the bundle has no policy: a budget needs one"))?;
                Some(match b {
                    Budget::Flops(f) => policy.threshold_for_budget(f)?,
                    Budget::Time(f) => policy.threshold_for_time_budget(f)?,
                })
            }
        };
        Ok(match path {
            PathChoice::Auto { .. } => PathChoice::Auto { threshold },
            other => other,
        })
    }
}

impl std::str::FromStr for PathChoice {
    type Err = String;

    /// `auto`, `full`, or a mask such as `11011111`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(PathChoice::Auto { threshold: None }),
            "full" => Ok(PathChoice::Full),
            m if !m.is_empty() && m.chars().all(|c| c == '0' || c == '1') => {
                Ok(PathChoice::Mask(m.chars().map(|c| c == '1').collect()))
            }
            other => Err(format!("{other:?}: expected auto, full, or a mask of 0/1 per block like 11011111")),
        }
    }
}

/// Seconds per stage for one volume.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    /// Reading the NIfTI file.
    pub read: f64,
    /// Normalisation and resampling.
    pub preprocess: f64,
    /// Policy (downsampling included).
    pub policy: f64,
    /// Tile batches through the graphs: the sum of this volume's network calls.
    pub network: f64,
    /// Host work around the network on this volume's thread: cutting tiles, blending, thresholding
    /// and taking the labels back to the input grid. It overlaps the network (the next tile batch runs
    /// while the previous one is blended).
    pub stitch: f64,
    /// Writing the label map.
    pub write: f64,
    /// The volume from the start of its read to the end of its write (stages overlap: less than
    /// their sum).
    pub wall: f64,
}

/// What happened to one volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    /// Input file (for a DICOM series: its folder and name).
    pub input: String,
    /// SeriesInstanceUID of a DICOM input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Output file.
    pub output: String,
    /// Shape `[D, H, W]`.
    pub shape: [usize; 3],
    /// Spacing (x, y, z) mm.
    pub spacing: [f64; 3],
    /// Keep mask as text (`11011111`).
    pub keep: String,
    /// Keep probabilities from the policy, if asked.
    pub keep_probabilities: Option<Vec<f32>>,
    /// The keep threshold they were compared with.
    pub threshold: Option<f32>,
    /// The smallest distance of a keep probability to the threshold: how near the path was to
    /// another one.
    pub margin: Option<f32>,
    /// For an audited volume: agreement with the full network, its cost, which labels were written.
    pub audit: Option<AuditOutcome>,
    /// With `--guard`: the volume's distance from the calibration volumes, and whether it took the
    /// full network for it.
    pub guard: Option<GuardOutcome>,
    /// The graph the tiles ran through: `full.onnx`, a whole-path graph (`path_11000001.onnx`) or
    /// `chain` (one session per kept block).
    pub graph: String,
    /// Blocks kept.
    pub blocks_kept: usize,
    /// FLOPs of this path relative to the full network (per tile).
    pub flop_fraction: f64,
    /// With a bundle compiled with `--cost`: this path's measured time relative to the full network's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_fraction: Option<f64>,
    /// Tiles run.
    pub tiles: usize,
    /// Seconds per stage.
    pub seconds: StageTimes,
    /// Peak resident memory of the process so far, MB.
    pub peak_rss_mb: f64,
}

/// Peak resident set size of this process in MB (Linux), 0 where unknown: since the process started or
/// since the last [`reset_peak_rss`].
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now in MB (Linux), 0 where unknown.
pub fn resident_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A memory field of `/proc/self/status` in MB, 0 where unknown.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Returns the freed heap to the kernel and restarts [`peak_rss_mb`] from the resident size that is
/// left (Linux's `clear_refs` 5); false where the kernel does not offer the restart. Why:
/// `autopath demo` benchmarks in the process that trained the networks, whose peak and freed heap
/// would otherwise be reported as the runtime's.
pub fn reset_peak_rss() -> bool {
    super::heap::release_freed_buffers();
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A segmentation on the original grid with the path that produced it.
pub struct Segmentation {
    /// Labels `[D, H, W]`.
    pub labels: Array3<u8>,
    /// Keep mask used.
    pub keep: Vec<bool>,
    /// Policy probabilities, when the policy was asked.
    pub keep_probabilities: Option<Vec<f32>>,
    /// The keep threshold they were compared with.
    pub threshold: Option<f32>,
    /// Tiles run.
    pub tiles: usize,
    /// The audit's finding, for an audited volume.
    pub audit: Option<AuditOutcome>,
    /// The guard's finding, with `--guard`.
    pub guard: Option<GuardOutcome>,
}

/// How a [`Predictor`] runs: its sessions, tiles per network call, the window step and the limits
/// for input files.
#[derive(Debug, Clone)]
pub struct PredictorOptions {
    /// Execution provider and session settings.
    pub session: SessionOptions,
    /// Tiles per network call (at least 1).
    pub tile_batch: usize,
    /// Sliding-window step as a fraction of the tile, in (0, 1]; None: the manifest's overlap.
    pub step: Option<f32>,
    /// Limits for input files.
    pub read: ReadOptions,
    /// Session sets, each run by a network thread of its own (at least 1).
    pub network_threads: usize,
    /// Whether concurrent volumes on one path share network calls (the service), or every call is one
    /// volume's (batch runs: outputs byte-identical to a sequential run).
    pub batching: Batching,
    /// Audit runs: a fraction of the volumes also run the full network (None: never).
    pub audit: Option<Audit>,
    /// Send volumes beyond the bundle's guard bound to the full network instead of the policy's path.
    pub guard: bool,
    /// Whether a volume's next tile batch is submitted before its previous one is blended (None: on
    /// GPU providers only). The outputs are the same bytes either way.
    pub overlap_blend: Option<bool>,
}

impl Default for PredictorOptions {
    fn default() -> Self {
        PredictorOptions {
            session: SessionOptions::default(),
            tile_batch: 2,
            step: None,
            read: ReadOptions::default(),
            network_threads: 1,
            batching: Batching::default(),
            audit: None,
            guard: false,
            overlap_blend: None,
        }
    }
}

/// A volume's tiles run and blended: the weighted sum, the tile count and the seconds spent.
struct Blended {
    accumulator: Accumulator,
    shape: [usize; 3],
    tiles: usize,
    /// Seconds of the network calls.
    network: f64,
    /// Seconds this thread spent cutting tiles and blending.
    host: f64,
}

/// The smallest distance of a keep probability to the threshold.
pub fn margin(probabilities: &[f32], threshold: f32) -> f32 {
    probabilities.iter().map(|p| (p - threshold).abs()).fold(f32::INFINITY, f32::min)
}

/// Whether two tiles are in one row of the window (the same depth and height origin).
fn same_row(a: [usize; 3], b: [usize; 3]) -> bool {
    a[0] == b[0] && a[1] == b[1]
}

/// Blends the held tile batches' outputs in their order, and empties the hold.
fn blend_held(accumulator: &mut Accumulator, held: &mut Vec<(&[[usize; 3]], ndarray::Array5<f32>)>) {
    let tiles: Vec<_> = held
        .iter()
        .flat_map(|(chunk, p)| chunk.iter().enumerate().map(move |(i, &o)| (o, p.index_axis(ndarray::Axis(0), i))))
        .collect();
    accumulator.add_tiles(&tiles);
    held.clear();
}

/// A bundle with its sessions, ready to segment: built whole by [`Predictor::from_bundle`], so every
/// entry point (the CLI, the service, the benchmark) gets the same checked state.
///
/// The sessions live in network threads ([`Network`]); the methods take `&self`, so several threads
/// can segment volumes at once, each doing its host work (reading, preprocessing, blending, writing)
/// while the others' tiles are in the network.
pub struct Predictor {
    bundle: Bundle,
    network: Network,
    tile_batch: usize,
    window: WindowConfig,
    read_options: ReadOptions,
    residency: super::session::Residency,
    /// Whether a volume's next tile batch is submitted before its previous one is blended. On a GPU
    /// provider the blending then hides behind the network; on the CPU provider, whose threads use
    /// every core, a blending thread beside them slowed the network more than it saved (CT-sized
    /// volume, 2 cores: wall 18.4 s → 19.9 s).
    overlap_blend: bool,
    audit: Option<Audit>,
    guard: bool,
    /// Paths without a graph in the bundle that run joined into one graph
    /// ([`super::joined`]): the first [`SessionOptions::joined_paths`](super::SessionOptions) distinct
    /// ones met; later ones run as the chain.
    joined: std::sync::Mutex<Vec<Vec<bool>>>,
    joined_paths: usize,
}

impl Predictor {
    /// Loads and verifies a bundle, opens every session and starts the network threads: ready to
    /// segment when it returns.
    pub fn from_bundle(dir: &Path, opts: &PredictorOptions) -> Result<Predictor> {
        if let Some(step) = opts.step.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
            return Err(Error::invalid("--step", format!("{step} is not in (0, 1]")));
        }
        let bundle = Bundle::load(dir)?;
        let mut window = bundle.manifest.input.window;
        if let Some(step) = opts.step {
            window.overlap = 1.0 - step;
        }
        let sets = (0..opts.network_threads.max(1))
            .map(|_| Sessions::open(&bundle, &opts.session))
            .collect::<Result<Vec<_>>>()?;
        let residency = sets[0].residency;
        let overlap_blend = opts.overlap_blend.unwrap_or(sets[0].options.ep != ExecutionProvider::Cpu);
        Ok(Predictor {
            overlap_blend,
            audit: opts.audit,
            guard: opts.guard,
            bundle,
            network: Network::start(sets, opts.batching),
            tile_batch: opts.tile_batch.max(1),
            window,
            read_options: opts.read,
            residency,
            joined: std::sync::Mutex::new(Vec::new()),
            joined_paths: opts.session.joined_paths,
        })
    }

    /// The verified bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Sliding-window settings in use (the manifest's, with the step asked for).
    pub fn window(&self) -> &WindowConfig {
        &self.window
    }

    /// Tiles per network call.
    pub fn tile_batch(&self) -> usize {
        self.tile_batch
    }

    /// Limits applied to input files.
    pub fn read_options(&self) -> &ReadOptions {
        &self.read_options
    }

    /// Where the chain keeps its intermediate values.
    pub fn residency(&self) -> super::session::Residency {
        self.residency
    }

    /// The provider each network thread's sessions run on (after any fallback).
    pub fn providers(&self) -> &[ExecutionProvider] {
        self.network.providers()
    }

    /// Counters of the network threads.
    pub fn network_stats(&self) -> &NetworkStats {
        self.network.stats()
    }

    /// Opens a stream for one volume's network work (older streams run first).
    pub fn stream(&self) -> Stream<'_> {
        self.network.stream()
    }

    /// Number of droppable blocks.
    pub fn num_blocks(&self) -> usize {
        self.bundle.manifest.architecture.blocks.len()
    }

    /// The policy's input for a normalised volume: resampled to the policy size (voxel centres aligned).
    pub fn policy_input(&self, image: &Array3<f32>) -> Result<Array3<f32>> {
        let p =
            self.bundle.manifest.policy.as_ref().ok_or_else(|| Error::request("path", "the bundle has no policy"))?;
        Ok(resample_linear(image, p.input))
    }

    /// Keep probabilities for a normalised volume.
    pub fn keep_probabilities(&self, image: &Array3<f32>) -> Result<Vec<f32>> {
        self.keep_probabilities_on(&self.stream(), image)
    }

    fn keep_probabilities_on(&self, stream: &Stream, image: &Array3<f32>) -> Result<Vec<f32>> {
        let small = self.policy_input(image)?;
        let (d, h, w) = small.dim();
        let batch =
            small.into_shape_with_order((1, 1, d, h, w)).map_err(|e| Error::invalid("policy input", e.to_string()))?;
        let p = stream.policy(batch)?.0.row(0).to_vec();
        // A policy graph that answers for another number of blocks would index past the chain.
        if p.len() != self.num_blocks() {
            return Err(Error::Bundle {
                path: self.bundle.dir.clone(),
                reason: format!(
                    "policy.onnx gives {} keep probabilities; the network has {} blocks",
                    p.len(),
                    self.num_blocks()
                ),
            });
        }
        Ok(p)
    }

    /// The keep mask for a volume and the probabilities it came from.
    pub fn keep_mask(&self, image: &Array3<f32>, choice: &PathChoice) -> Result<(Vec<bool>, Option<Vec<f32>>)> {
        self.keep_mask_on(&self.stream(), image, choice)
    }

    fn keep_mask_on(
        &self,
        stream: &Stream,
        image: &Array3<f32>,
        choice: &PathChoice,
    ) -> Result<(Vec<bool>, Option<Vec<f32>>)> {
        let n = self.num_blocks();
        match choice {
            PathChoice::Full | PathChoice::FullGraph => Ok((vec![true; n], None)),
            PathChoice::Mask(m) if m.len() == n => Ok((m.clone(), None)),
            PathChoice::Mask(m) => Err(Error::request(
                "path",
                format!("mask {} has {} entries; the bundle has {n} blocks", crate::labels::mask_text(m), m.len()),
            )),
            PathChoice::Auto { threshold } => {
                if self.bundle.manifest.policy.is_none() {
                    return Ok((vec![true; n], None));
                }
                let t = threshold.or(self.bundle.manifest.policy.as_ref().map(|p| p.threshold)).unwrap_or(0.5);
                let p = self.keep_probabilities_on(stream, image)?;
                Ok((p.iter().map(|&v| v >= t).collect(), Some(p)))
            }
        }
    }

    /// Runs a normalised image's tiles through `route` and blends them. Two batches are in flight: the
    /// next one is in the network while this thread blends the previous one (blending order, and so
    /// every bit of the result, is the tile order, as in [`crate::input::window::slide`]).
    fn blend_tiles(&self, stream: &Stream, image: &Array3<f32>, pad_value: f32, route: &Route) -> Result<Blended> {
        let t = Instant::now();
        let tiling = Tiling::new(image, pad_value, &self.window);
        let channels = self.bundle.manifest.input.activation.channels();
        let mut accumulator = Accumulator::new(channels, tiling.padded_shape(), &self.window);
        let per_call = self.tile_batch.min(tiling.origins.len().max(1));
        let padded = tiling.padded();
        let patch = self.window.patch;
        let mut chunks = tiling.origins.chunks(per_call);
        let submit = |chunk: Option<&[[usize; 3]]>| -> Result<Option<Ticket>> {
            chunk.map(|c| stream.submit(route, batch_of_tiles(&padded, c, patch))).transpose()
        };
        let mut current = chunks.next();
        let mut pending = submit(current)?;
        let (mut network, mut waited) = (0.0, 0.0);
        let mut held: Vec<(&[[usize; 3]], ndarray::Array5<f32>)> = Vec::new();
        while let (Some(chunk), Some(ticket)) = (current, pending.take()) {
            current = chunks.next();
            if self.overlap_blend {
                pending = submit(current)?;
            }
            let w = Instant::now();
            let out = ticket.wait()?;
            waited += w.elapsed().as_secs_f64();
            network += out.seconds;
            // Outputs wait until their row of the window is complete, then blend together.
            if held.last().is_some_and(|(c, _): &(&[[usize; 3]], _)| !same_row(c[c.len() - 1], chunk[0])) {
                blend_held(&mut accumulator, &mut held);
            }
            held.push((chunk, out.probabilities));
            if !self.overlap_blend {
                pending = submit(current)?;
            }
        }
        blend_held(&mut accumulator, &mut held);
        let host = t.elapsed().as_secs_f64() - waited;
        Ok(Blended { accumulator, shape: tiling.shape, tiles: tiling.origins.len(), network, host })
    }

    /// Class probabilities `[K, D, H, W]` of a normalised volume through `route` (the benchmark's
    /// three: `full.onnx`, the chain of block graphs, the path through the fewest sessions). Returns
    /// the number of tiles and the seconds spent in the network.
    pub fn probabilities(
        &self,
        image: &Array3<f32>,
        pad_value: f32,
        route: &Route,
    ) -> Result<(Array4<f32>, usize, f64)> {
        let b = self.blend_tiles(&self.stream(), image, pad_value, route)?;
        Ok((b.accumulator.finish(b.shape), b.tiles, b.network))
    }

    /// The graph a keep mask runs through: `full.onnx` when every block is kept, the bundle's
    /// whole-path graph when it has one, a graph joined from the segments (`joined path_….onnx`) for
    /// the first `--joined-paths` other paths, else `chain`. Asking registers the path.
    pub fn graph_for(&self, keep: &[bool]) -> String {
        if keep.iter().all(|&k| k) {
            return self.bundle.manifest.architecture.full_file.clone();
        }
        let mask = crate::labels::mask_text(keep);
        let mut graphs = self.bundle.manifest.policy.iter().flat_map(|p| &p.path_graphs);
        if let Some(g) = graphs.find(|g| g.mask == mask) {
            return g.file.clone();
        }
        let mut joined = self.joined.lock().unwrap_or_else(|e| e.into_inner());
        if !joined.iter().any(|k| k.as_slice() == keep) {
            if joined.len() >= self.joined_paths {
                return "chain".into();
            }
            joined.push(keep.to_vec());
        }
        format!("joined {}", autopath_bundle::names::path_file(&mask))
    }

    /// The route of a keep mask: the fewest sessions, except that a path beyond the joined ones runs
    /// as the chain ([`Predictor::graph_for`]).
    fn route_for(&self, keep: &[bool]) -> Route {
        match self.graph_for(keep).as_str() {
            "chain" => Route::Blocks(keep.to_vec()),
            _ => Route::Chain(keep.to_vec()),
        }
    }

    /// Labels from blended probabilities.
    pub fn labels(&self, probs: &Array4<f32>) -> Array3<u8> {
        let m = &self.bundle.manifest.input;
        crate::labels::from_probabilities(probs, m.activation, m.threshold)
    }

    /// Preprocesses a volume as the manifest says.
    pub fn preprocess(&self, volume: &Volume) -> Result<(Array3<f32>, Record)> {
        self.bundle.manifest.input.preprocessing.image(volume)
    }

    /// Segments a volume in memory: labels on the original grid, keep mask, probabilities, report.
    pub fn segment(&self, volume: &Volume, choice: &PathChoice, times: &mut StageTimes) -> Result<Segmentation> {
        self.segment_on(self.stream(), volume, choice, times)
    }

    /// [`Predictor::segment`] on an open stream, which it closes once its last tile is answered.
    pub fn segment_on(
        &self,
        stream: Stream,
        volume: &Volume,
        choice: &PathChoice,
        times: &mut StageTimes,
    ) -> Result<Segmentation> {
        let t = Instant::now();
        let (image, record) = self.preprocess(volume)?;
        times.preprocess = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (mut keep, probs) = self.keep_mask_on(&stream, &image, choice)?;
        let guard = if probs.is_some() { self.guard_check(&image)? } else { None };
        if guard.is_some_and(|g| g.tripped) {
            keep.iter_mut().for_each(|k| *k = true);
        }
        times.policy = t.elapsed().as_secs_f64();
        let route = if *choice == PathChoice::FullGraph { Route::Full } else { self.route_for(&keep) };
        // A path that keeps every block is the full network: nothing to audit.
        let reduced = route != Route::Full && keep.iter().any(|k| !k);
        let audited = self.audit.filter(|a| reduced && a.selects(volume.data.as_slice().unwrap_or(&[])));
        let blended = self.blend_tiles(&stream, &image, record.pad_value, &route)?;
        // Unless the volume is audited, its network work is done: a closed stream is not waited for.
        let (stream, image) = if audited.is_some() { (Some(stream), Some(image)) } else { (None, None) };
        let t = Instant::now();
        let mut labels = self.finish_labels(blended.accumulator, blended.shape, &record);
        times.network = blended.network;
        times.stitch = blended.host + t.elapsed().as_secs_f64();
        let audit = match (audited, stream, image) {
            (Some(a), Some(stream), Some(image)) => {
                let (full, outcome) = self.audit_against_full(&stream, &image, &record, &labels, &a)?;
                if outcome.answered_full {
                    labels = full;
                }
                Some(outcome)
            }
            _ => None,
        };
        let threshold = self.threshold_for(choice).filter(|_| probs.is_some());
        Ok(Segmentation { labels, keep, keep_probabilities: probs, threshold, tiles: blended.tiles, audit, guard })
    }

    /// With `--guard`, how far the volume's policy input lies from the calibration volumes' (None
    /// without `--guard` or without a calibrated guard in the bundle).
    fn guard_check(&self, image: &Array3<f32>) -> Result<Option<GuardOutcome>> {
        let Some(g) = self.bundle.manifest.policy.as_ref().and_then(|p| p.guard.as_ref()).filter(|_| self.guard) else {
            return Ok(None);
        };
        let small = self.policy_input(image)?;
        let distance = g.distance(&autopath_bundle::guard::features(small.as_slice().unwrap_or_default()));
        Ok(Some(GuardOutcome { distance, bound: g.bound, tripped: distance > g.bound }))
    }

    /// Labels on the input grid from a volume's blended tiles.
    /// On a resampled volume the probabilities go back to the input's grid (trilinear) before the
    /// threshold, so that thin structures are not lost or blocky as label resampling would make them.
    fn finish_labels(&self, accumulator: Accumulator, shape: [usize; 3], record: &Record) -> Array3<u8> {
        let m = &self.bundle.manifest.input;
        if record.resampled_shape == record.original_shape {
            let labels = crate::labels::from_accumulator(accumulator, shape, m.activation, m.threshold);
            return m.preprocessing.restore(labels, record);
        }
        let channels = crate::labels::blended_channels(accumulator, shape, m.activation);
        let back: Vec<Array3<f32>> = channels.iter().map(|c| resample_linear(c, record.original_shape)).collect();
        crate::labels::from_channels(&back, m.activation, m.threshold)
    }

    /// The full network's labels for an audited volume and how the path's `labels` agree with them.
    fn audit_against_full(
        &self,
        stream: &Stream,
        image: &Array3<f32>,
        record: &Record,
        labels: &Array3<u8>,
        audit: &Audit,
    ) -> Result<(Array3<u8>, AuditOutcome)> {
        let t = Instant::now();
        let full = self.blend_tiles(stream, image, record.pad_value, &Route::Full)?;
        let full = self.finish_labels(full.accumulator, full.shape, record);
        let agreement = crate::labels::accuracy_and_dice(labels, &full).1;
        let outcome = AuditOutcome {
            agreement,
            seconds: t.elapsed().as_secs_f64(),
            answered_full: agreement < audit.min_agreement,
        };
        Ok((full, outcome))
    }

    /// The bundle's labels other than background, as DICOM SEG segments (number = label value).
    pub fn segments(&self) -> Vec<SegmentDescription> {
        let names = &self.bundle.manifest.input.labels;
        names
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, n)| SegmentDescription { number: i as u8, label: n.clone() })
            .collect()
    }

    /// The keep threshold a choice uses: its own, or the bundle's (None without a policy).
    pub fn threshold_for(&self, choice: &PathChoice) -> Option<f32> {
        let policy = self.bundle.manifest.policy.as_ref()?;
        match choice {
            PathChoice::Auto { threshold } => Some(threshold.unwrap_or(policy.threshold)),
            _ => None,
        }
    }

    /// Reads the NIfTI file `input`, segments it, writes `output` (atomically) with the input's geometry.
    pub fn segment_file(&self, input: &Path, output: &Path, choice: &PathChoice) -> Result<VolumeReport> {
        self.segment_file_on(self.stream(), &Source::Nifti(input.to_path_buf()), output, choice)
    }

    /// [`Predictor::segment_file`] on an open stream (a batch opens them in input order, so earlier
    /// volumes' tiles run first).
    pub fn segment_file_on(
        &self,
        stream: Stream,
        input: &Source,
        output: &Path,
        choice: &PathChoice,
    ) -> Result<VolumeReport> {
        let start = Instant::now();
        let mut times = StageTimes::default();
        let kind = OutputType::of(output);
        if kind == OutputType::DicomSeg && matches!(input, Source::Nifti(_)) {
            return Err(Error::invalid("DICOM SEG", format!("{}: needs a DICOM source", output.display())));
        }
        let (volume, reference) = input.read(&self.read_options)?;
        times.read = start.elapsed().as_secs_f64();
        let Segmentation { labels, keep, keep_probabilities: probs, threshold, tiles, audit, guard } =
            self.segment_on(stream, &volume, choice, &mut times)?;
        let t = Instant::now();
        match (kind, &reference) {
            (OutputType::DicomSeg, Some(r)) => write_seg(output, &labels, r, &self.segments())?,
            _ => write_label_map(output, &labels, &volume.geometry, &self.bundle.manifest.input.labels)?,
        }
        times.write = t.elapsed().as_secs_f64();
        times.wall = start.elapsed().as_secs_f64();
        let arch = &self.bundle.manifest.architecture;
        let margin = threshold.zip(probs.as_ref()).map(|(t, p)| margin(p, t));
        Ok(VolumeReport {
            input: input.describe(),
            series: reference.map(|r| r.series_uid),
            output: output.display().to_string(),
            shape: volume.geometry.shape,
            spacing: volume.geometry.spacing,
            keep: crate::labels::mask_text(&keep),
            keep_probabilities: probs,
            threshold,
            margin,
            audit,
            guard,
            graph: if *choice == PathChoice::FullGraph {
                self.bundle.manifest.architecture.full_file.clone()
            } else {
                self.graph_for(&keep)
            },
            blocks_kept: keep.iter().filter(|&&k| k).count(),
            flop_fraction: arch.flop_fraction(&keep),
            time_fraction: self.bundle.manifest.measured_cost.as_ref().map(|c| c.flop_fraction(&keep)),
            tiles,
            seconds: times,
            peak_rss_mb: peak_rss_mb(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests below measure the whole process's memory: one at a time.
    static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A peak left by earlier work (in `demo`, the training) is gone from the count after a reset, so the
    /// benchmark reports its own memory.
    #[test]
    fn a_reset_forgets_an_earlier_peak() {
        let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
        const MB: usize = 1 << 20;
        let big = vec![1u8; 600 * MB];
        assert!(big.iter().step_by(4096).all(|&b| b == 1));
        let with_big = peak_rss_mb();
        drop(big);
        assert!(reset_peak_rss(), "/proc/self/clear_refs refused");
        let after = peak_rss_mb();
        assert!(with_big - after > 400.0, "peak {with_big:.0} MB with the buffer, {after:.0} MB after the reset");
    }

    /// Heap memory freed below a live allocation (which the allocator keeps) leaves the count at the
    /// reset too: in `demo`, what the training freed is not the benchmark's.
    #[test]
    fn a_reset_returns_the_freed_heap() {
        let _alone = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
        let chunks: Vec<Vec<u8>> = (0..3000).map(|_| vec![1u8; 100 << 10]).collect();
        let pin = vec![1u8; 1 << 10];
        let with_chunks = status_mb("VmRSS:");
        drop(chunks);
        assert!(reset_peak_rss(), "/proc/self/clear_refs refused");
        let after = peak_rss_mb();
        assert!(
            with_chunks - after > 200.0,
            "{with_chunks:.0} MB resident with 300 MB of chunks, peak {after:.0} MB after"
        );
        assert_eq!(pin[0], 1);
    }
}
