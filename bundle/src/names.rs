//! The names a bundle's files and graphs use: written by the exporter, read by the runtime. Nothing
//! else in the workspace spells them.

/// The manifest's file name in the bundle folder.
pub const MANIFEST: &str = "manifest.json";
/// Stem graph: [`IMAGE`] → [`FEATURES`].
pub const STEM_FILE: &str = "stem.onnx";
/// Head graph: [`X`] (and [`LOW`] with the skip decoder) → [`PROBABILITIES`].
pub const HEAD_FILE: &str = "head.onnx";
/// The split head's low-level part: [`LOW`] → [`SKIP`].
pub const HEAD_LOW_FILE: &str = "head_low.onnx";
/// The split head's rest: [`X`], [`SKIP`] → [`PROBABILITIES`].
pub const HEAD_REST_FILE: &str = "head_rest.onnx";
/// The whole network: [`IMAGE`] → [`PROBABILITIES`].
pub const FULL_FILE: &str = "full.onnx";
/// The policy: [`VOLUME`] → [`KEEP`].
pub const POLICY_FILE: &str = "policy.onnx";

/// Graph of block `n` kept: [`X`] → [`Y`].
pub fn block_file(n: usize) -> String {
    format!("block_{n:02}.onnx")
}

/// Graph of block `n`'s projection shortcut, run when the block is dropped: [`X`] → [`Y`].
pub fn shortcut_file(n: usize) -> String {
    format!("shortcut_{n:02}.onnx")
}

/// Graph of one whole path (stem, the path's blocks and shortcuts, head) for a keep mask such as
/// `11000001`: [`IMAGE`] → [`PROBABILITIES`], as `full.onnx`.
pub fn path_file(mask: &str) -> String {
    format!("path_{mask}.onnx")
}

/// Input of the stem and of the whole network: tiles `[B, 1, D, H, W]`.
pub const IMAGE: &str = "image";
/// The symbolic batch axis of every graph's inputs and outputs.
pub const BATCH: &str = "batch";
/// Output of the stem.
pub const FEATURES: &str = "features";
/// Input of a block, a shortcut, the head and the split head's rest.
pub const X: &str = "x";
/// Output of a block or a shortcut.
pub const Y: &str = "y";
/// The head's second input with the skip decoder: the value after the last block of stage 0.
pub const LOW: &str = "low";
/// The split head's intermediate value: `head_low.onnx`'s output, `head_rest.onnx`'s second input.
pub const SKIP: &str = "skip";
/// Output of the head and of the whole network: `[B, K, D, H, W]` after sigmoid or softmax.
pub const PROBABILITIES: &str = "probabilities";
/// Input of the policy: the volume resampled to the policy's input size.
pub const VOLUME: &str = "volume";
/// Output of the policy: keep probability per block, `[B, N]`.
pub const KEEP: &str = "keep";
