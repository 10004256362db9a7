//! An estimate of the GPU memory one `autopath-run` worker needs, from the manifest alone: what an
//! operator sizes `serve --workers` and the pod's limit by before the first run.
//!
//! - Weights: every session holds its own initializers, so the graph files the chain opens (stem,
//!   blocks, shortcuts, head, policy), plus `full.onnx` when a run uses it (a path that keeps every
//!   block, audits, `bench`) and each whole-path graph when its path first runs.
//! - Activations: the chain keeps a block's input and output, and its branch's intermediates, for
//!   `tile_batch` tiles; the head's largest tensors are ASPP's five branches with their concatenation,
//!   the decoder's transposed convolutions (skip decoder: the low-level input, which the chain keeps
//!   alive, and its concatenation with the resized ASPP output) and the class maps upsampled to the tile.
//! - A margin of 25 % for arena rounding and fragmentation, and, once per process, the CUDA context
//!   with the cuDNN and cuBLAS handles (about 500 MB on recent GPUs).
//!
//! An estimate, not a measurement: `scripts/gpu-check` is where it gets compared with one.

use autopath_bundle::Bundle;

/// MB per worker, by part.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MemoryEstimate {
    /// Initializers of the graphs the chain opens.
    pub weights_mb: f64,
    /// `full.onnx`'s initializers, when it is opened.
    pub full_graph_mb: f64,
    /// The whole-path graphs' initializers, each when its path first runs.
    #[serde(default)]
    pub path_graphs_mb: f64,
    /// Largest live activations of one call of `tile_batch` tiles.
    pub activations_mb: f64,
    /// Arena rounding and fragmentation.
    pub margin_mb: f64,
    /// Per process, not per worker.
    pub cuda_context_mb: f64,
}

impl MemoryEstimate {
    /// One worker of the chain, without `full.onnx`.
    pub fn per_worker_mb(&self) -> f64 {
        self.weights_mb + self.activations_mb + self.margin_mb
    }
}

const MB: f64 = 1024.0 * 1024.0;
const CUDA_CONTEXT_MB: f64 = 500.0;

/// Estimates a worker's GPU memory for calls of `tile_batch` tiles.
pub fn estimate(bundle: &Bundle, tile_batch: usize) -> MemoryEstimate {
    let m = &bundle.manifest;
    let a = &m.architecture;
    let size = |f: &str| m.files.get(f).map_or(0, |e| e.bytes) as f64;
    let mut chain_files: Vec<&str> = vec![&a.stem_file, &a.head_file];
    chain_files.extend(a.blocks.iter().map(|b| b.file.as_str()));
    chain_files.extend(a.blocks.iter().filter_map(|b| b.shortcut_file.as_deref()));
    if let Some(p) = &m.policy {
        chain_files.push(&p.file);
    }
    let weights = chain_files.iter().map(|f| size(f)).sum::<f64>();
    let elems = |s: [usize; 4]| s.iter().product::<usize>() as f64;
    // A block: input, output and two intermediates of the larger of the two.
    let block_peak =
        a.blocks.iter().map(|b| elems(b.input) + 3.0 * elems(b.output)).fold(elems(a.stem_output), f64::max);
    let head_in = a.blocks.last().map_or(elems(a.stem_output), |b| elems(b.output));
    let tile = m.input.window.patch.iter().product::<usize>() as f64;
    let classes = m.input.activation.channels() as f64;
    // ASPP: five branches at the input's size, their concatenation (5×), the projection; the two
    // transposed convolutions (8× the voxels each, channels halved: 4× and 16× the input's elements);
    // then the class maps upsampled to the tile, before and after the activation.
    let decoder = match &a.low_level {
        // Skip decoder: the low-level input kept alive through the chain, the ASPP output resized to its
        // grid and the concatenation with the reduced features (about twice the ASPP's channels
        // there), the two convolutions' outputs.
        Some(l) => {
            let low_vox = elems(l.shape) / l.shape[0] as f64;
            let aspp_channels = 4.0 * a.width as f64;
            elems(l.shape) + 2.0 * aspp_channels * low_vox + 2.0 * a.width as f64 * low_vox
        }
        None => 20.0 * head_in,
    };
    let head_peak = 11.0 * head_in + decoder + 2.0 * classes * tile;
    let activations = tile_batch.max(1) as f64 * block_peak.max(head_peak) * 4.0;
    MemoryEstimate {
        weights_mb: weights / MB,
        full_graph_mb: size(&a.full_file) / MB,
        path_graphs_mb: m.policy.iter().flat_map(|p| &p.path_graphs).map(|g| size(&g.file)).sum::<f64>() / MB,
        activations_mb: activations / MB,
        margin_mb: 0.25 * (weights + activations) / MB,
        cuda_context_mb: CUDA_CONTEXT_MB,
    }
}
