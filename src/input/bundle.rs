//! The deployable bundle: a folder of ONNX graphs and `manifest.json`, the typed contract between
//! `autopath compile` and `autopath-run`. Loading verifies the schema version and every file's SHA-256.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::input::preprocess::Preprocessing;
use crate::input::window::WindowConfig;

/// The manifest schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Who made the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Producer {
    /// autopath version.
    pub autopath: String,
    /// ONNX opset of every graph.
    pub onnx_opset: i64,
    /// ONNX IR version.
    pub onnx_ir_version: i64,
    /// ONNX Runtime the bundle was verified with.
    pub onnx_runtime: String,
    /// How the graphs write 3D convolutions: `native` (one 3D `Conv`) or `depth-taps` (2D `Conv`s
    /// over depth slices, faster on ONNX Runtime's CPU provider). Older bundles: native.
    #[serde(default = "native")]
    pub conv3d: String,
}

fn native() -> String {
    "native".into()
}

/// The network's output activation.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// One foreground channel, sigmoid.
    Sigmoid,
    /// Softmax over `classes` channels.
    Softmax {
        /// Number of classes.
        classes: usize,
    },
}

impl Activation {
    /// Output channels.
    pub fn channels(self) -> usize {
        match self {
            Activation::Sigmoid => 1,
            Activation::Softmax { classes } => classes,
        }
    }
}

/// One residual block of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockEntry {
    /// Index in dropping order.
    pub index: usize,
    /// Weight-naming prefix (`stage2.block0`).
    pub name: String,
    /// Graph of the kept block.
    pub file: String,
    /// Graph of the projection shortcut, run when the block is dropped (none for identity).
    pub shortcut_file: Option<String>,
    /// Input `[C, D, H, W]` for one tile.
    pub input: [usize; 4],
    /// Output `[C, D, H, W]` for one tile.
    pub output: [usize; 4],
    /// FLOPs per tile of the residual branch (saved when dropped).
    pub branch_flops: u64,
    /// FLOPs per tile of the projection shortcut (paid either way).
    pub shortcut_flops: u64,
}

fn paper_decoder() -> String {
    "paper".into()
}

/// Where the skip decoder's low-level features come from: the value after block `after_block` on
/// whatever path ran (dropped blocks included), fed to the head graph's `input`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LowLevel {
    /// The block after which the features are taken (the last of stage 0).
    pub after_block: usize,
    /// Input name in the head graph.
    pub input: String,
    /// Shape `[C, D, H, W]` for one tile.
    pub shape: [usize; 4],
    /// The head also in two graphs, for scoring many paths per volume (`eval`, `train-policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitHead>,
}

/// The head in two graphs: `low_file` maps the low-level features to `output`, the part of the skip
/// decoder that reads nothing else; `rest_file` maps the head's `x` and `output` to the
/// probabilities, as the head graph maps `x` and the features. Paths that run the same blocks before
/// the low-level features share that part, which costs a third of the head on the CPU.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitHead {
    /// Low-level features → the skip part.
    pub low_file: String,
    /// `x` and the skip part → probabilities.
    pub rest_file: String,
    /// Name of the skip part: `low_file`'s output and `rest_file`'s second input.
    pub output: String,
    /// Shape `[C, D, H, W]` of the skip part for one tile.
    pub shape: [usize; 4],
}

/// The architecture and the cost of each segment, per tile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Architecture {
    /// Preset (`r18`, `r50`).
    pub name: String,
    /// `basic` or `bottleneck`.
    pub block: String,
    /// First-stage width.
    pub width: usize,
    /// Trainable parameters.
    pub parameters: u64,
    /// Stem graph.
    pub stem_file: String,
    /// Stem FLOPs per tile.
    pub stem_flops: u64,
    /// Stem output `[C, D, H, W]`.
    pub stem_output: [usize; 4],
    /// The droppable blocks.
    pub blocks: Vec<BlockEntry>,
    /// Head graph (ASPP + decoder + upsampling + activation).
    pub head_file: String,
    /// `paper` or `skip` (bundles from before the choice existed have the paper's).
    #[serde(default = "paper_decoder")]
    pub decoder: String,
    /// The skip decoder's second head input: which block's output it is. None: the head takes only
    /// the backbone's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_level: Option<LowLevel>,
    /// Head FLOPs per tile.
    pub head_flops: u64,
    /// The whole network as one graph.
    pub full_file: String,
}

impl Architecture {
    /// FLOPs per tile with every block kept.
    pub fn full_flops(&self) -> u64 {
        self.stem_flops + self.head_flops + self.blocks.iter().map(|b| b.branch_flops + b.shortcut_flops).sum::<u64>()
    }

    /// FLOPs per tile of a path.
    pub fn path_flops(&self, keep: &[bool]) -> u64 {
        self.full_flops() - self.blocks.iter().zip(keep).filter(|(_, k)| !**k).map(|(b, _)| b.branch_flops).sum::<u64>()
    }
}

/// What the runtime must do to an input volume, exactly as training did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputContract {
    /// `CT` or `MR`.
    pub modality: String,
    /// How orientation is handled.
    pub orientation: String,
    /// Intensity normalisation, label mapping and resampling.
    pub preprocessing: Preprocessing,
    /// Tile size, overlap and blending; graphs are validated for this tile size.
    pub window: WindowConfig,
    /// Output activation.
    pub activation: Activation,
    /// Foreground threshold on sigmoid probabilities.
    pub threshold: f32,
    /// Names of the output labels, index = value.
    pub labels: Vec<String>,
}

/// The policy graph and how it was trained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyEntry {
    /// Graph file.
    pub file: String,
    /// Input size `[D, H, W]`: the preprocessed volume resampled (trilinear, voxel centres aligned).
    pub input: [usize; 3],
    /// Keep block n when p_n ≥ threshold.
    pub threshold: f32,
    /// How the policy was trained; None for a seeded, untrained policy (`compile --untrained`).
    #[serde(default)]
    pub training: Option<PolicyTraining>,
    /// What each keep threshold spends: the policy's mean FLOP fraction over the calibration volumes
    /// (the segmenter run's validation and training volumes) at every threshold where it changes,
    /// ascending in threshold. `--budget` picks from it; empty for bundles compiled without data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budget: Vec<BudgetPoint>,
}

/// What a bundle records of how its policy was trained, so that a deployed bundle can be traced to its
/// settings and validation figures. Fields that older versions did not record read as defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyTraining {
    /// `paper` (REINFORCE as method.md) or `distil` (ours).
    pub method: String,
    /// Distil: the Dice tolerance of the targets.
    pub dice_tolerance: f64,
    /// Penalty per wrong voxel τ.
    pub tau: f64,
    /// Exploration bound α.
    pub alpha: f64,
    /// Entropy bonus β.
    pub beta: f64,
    /// Epochs per curriculum step.
    pub curriculum_epochs: usize,
    /// Epochs trained at the saved checkpoint.
    pub epochs: usize,
    /// Blocks the curriculum had not reached (paper) or past the validation guard's cap or shift
    /// (distil), kept whatever the policy says.
    pub forced_keep: Vec<bool>,
    /// Distil's validation guard, when it shifted the policy back along its drop order: block n's
    /// decision is the trained policy's output `output_source[n]` (empty: its own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_source: Vec<usize>,
    /// Validation score of the saved checkpoint.
    pub val_score: Option<f64>,
    /// Validation Dice of the saved checkpoint.
    pub val_dice: Option<f64>,
    /// Validation drop ratio of the saved checkpoint.
    pub val_dropped: Option<f64>,
    /// Keep threshold deployed.
    pub threshold: Option<f32>,
    /// Whether that threshold was chosen on the validation volumes.
    pub threshold_from_validation: bool,
}

/// One point of the budget calibration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BudgetPoint {
    /// Keep threshold.
    pub threshold: f32,
    /// Mean FLOP fraction of the full network that the policy's paths spend at it.
    pub flop_fraction: f64,
}

impl BudgetPoint {
    /// The calibration curve of a policy from its keep probabilities on some volumes: one point at
    /// every threshold where a volume's path changes (each distinct probability, as `p ≥ t` keeps),
    /// plus 1.0; thresholds ascending, so FLOP fractions descending.
    pub fn curve(probabilities: &[Vec<f32>], arch: &Architecture) -> Vec<BudgetPoint> {
        if probabilities.is_empty() {
            return Vec::new();
        }
        let mut thresholds: Vec<f32> = probabilities.iter().flatten().copied().filter(|p| *p <= 1.0).collect();
        thresholds.push(0.0);
        thresholds.push(1.0);
        thresholds.sort_by(f32::total_cmp);
        thresholds.dedup();
        let mut curve: Vec<BudgetPoint> = thresholds
            .into_iter()
            .map(|t| {
                let spend = probabilities
                    .iter()
                    .map(|p| crate::labels::flop_fraction(arch, &p.iter().map(|&v| v >= t).collect::<Vec<_>>()))
                    .sum::<f64>();
                BudgetPoint { threshold: t, flop_fraction: spend / probabilities.len() as f64 }
            })
            .collect();
        // Only the lowest threshold of each spend matters (it keeps the most blocks for that spend).
        curve.dedup_by(|later, earlier| later.flop_fraction == earlier.flop_fraction);
        curve
    }
}

impl PolicyEntry {
    /// The lowest keep threshold (so the most blocks, and the best Dice) whose calibrated mean FLOP
    /// fraction is within `budget`.
    pub fn threshold_for_budget(&self, budget: f64) -> Result<f32> {
        BudgetPoint::threshold_for(&self.budget, budget)
    }
}

impl BudgetPoint {
    /// The lowest keep threshold of `curve` whose mean FLOP fraction is within `budget`.
    pub fn threshold_for(curve: &[BudgetPoint], budget: f64) -> Result<f32> {
        if !(budget > 0.0 && budget <= 1.0) {
            return Err(Error::request("budget", format!("{budget} is not a FLOP fraction in (0, 1]")));
        }
        let Some(last) = curve.last() else {
            return Err(Error::request(
                "budget",
                "this bundle has no budget calibration (compiled without the segmenter's data); use --threshold",
            ));
        };
        curve.iter().find(|p| p.flop_fraction <= budget).map(|p| p.threshold).ok_or_else(|| {
            Error::request(
                "budget",
                format!(
                    "{budget} is below the cheapest calibrated spend of this policy ({:.3} of the full FLOPs)",
                    last.flop_fraction
                ),
            )
        })
    }
}

/// A file of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// What the graph computes.
    pub role: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Producer versions.
    pub producer: Producer,
    /// Network and per-block costs.
    pub architecture: Architecture,
    /// Input contract.
    pub input: InputContract,
    /// The policy; without one the runtime always runs the full path.
    pub policy: Option<PolicyEntry>,
    /// The summary of the `eval` study the bundle was compiled with (Dice full vs AutoPath, drop ratio,
    /// oracles), if any. Written from the study's typed summary and kept as JSON here: the runtime only
    /// shows it, and bundles keep loading when the study gains fields.
    pub evaluation: Option<serde_json::Value>,
    /// Every graph file with its checksum.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The values the runtime relies on, checked once at load so that no later step can index out of
    /// bounds or divide by zero on a hand-edited manifest.
    fn validate(&self) -> std::result::Result<(), String> {
        let arch = &self.architecture;
        if arch.blocks.is_empty() {
            return Err("architecture.blocks is empty".into());
        }
        for (n, b) in arch.blocks.iter().enumerate() {
            if b.index != n {
                return Err(format!("architecture.blocks[{n}].index is {}, expected {n}", b.index));
            }
        }
        if let Some(l) = &arch.low_level {
            let b = arch.blocks.get(l.after_block).ok_or_else(|| {
                format!(
                    "architecture.low_level.after_block = {} is not a block (N = {})",
                    l.after_block,
                    arch.blocks.len()
                )
            })?;
            if b.output != l.shape {
                return Err(format!(
                    "architecture.low_level.shape = {:?} is not block {}'s output {:?}",
                    l.shape, l.after_block, b.output
                ));
            }
            if let Some(split) = l.split.as_ref().filter(|s| s.shape[1..] != l.shape[1..] || s.shape[0] == 0) {
                return Err(format!(
                    "architecture.low_level.split.shape = {:?} is not on the low-level grid {:?}",
                    split.shape,
                    &l.shape[1..]
                ));
            }
        }
        self.input.window.validate().map_err(|e| format!("input.window: {e}"))?;
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} = {v} is not in [0, 1]"))
            }
        };
        unit("input.threshold", self.input.threshold)?;
        if let Some(p) = &self.policy {
            unit("policy.threshold", p.threshold)?;
            if p.input.contains(&0) {
                return Err(format!("policy.input = {:?} has a zero extent", p.input));
            }
            for (i, b) in p.budget.iter().enumerate() {
                unit(&format!("policy.budget[{i}].threshold"), b.threshold)?;
                if !(b.flop_fraction > 0.0 && b.flop_fraction <= 1.0) {
                    return Err(format!("policy.budget[{i}].flop_fraction = {} is not in (0, 1]", b.flop_fraction));
                }
            }
            if p.budget.windows(2).any(|w| w[0].threshold >= w[1].threshold) {
                return Err("policy.budget thresholds are not ascending".into());
            }
        }
        Ok(())
    }
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn bundle_error(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Bundle { path: dir.to_path_buf(), reason: reason.into() }
}

/// A loaded, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json`, identifying the bundle (e.g. for TensorRT caches).
    pub hash: String,
}

impl Bundle {
    /// Reads `manifest.json`, checks the schema, and verifies every listed file's checksum.
    pub fn load(dir: &Path) -> Result<Bundle> {
        let mpath = dir.join("manifest.json");
        let bytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let version =
            serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["schema_version"].as_u64());
        match version {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(bundle_error(
                    dir,
                    format!(
                        "manifest schema version {v} is not supported (this autopath reads version {SCHEMA_VERSION})"
                    ),
                ))
            }
            None => return Err(bundle_error(dir, "manifest.json is not a valid manifest (no schema_version)")),
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bundle_error(dir, format!("manifest.json: {e}")))?;
        for (name, entry) in &manifest.files {
            if name.contains('/') || name.contains("..") {
                return Err(bundle_error(dir, format!("file name {name:?} is not a plain name")));
            }
            let p = dir.join(name);
            let data = std::fs::read(&p).map_err(|e| bundle_error(dir, format!("{name}: {e}")))?;
            let got = sha256_hex(&data);
            if got != entry.sha256 {
                return Err(bundle_error(
                    dir,
                    format!(
                        "{name}: checksum mismatch (manifest {}, file {got}); the bundle was modified or is incomplete",
                        entry.sha256
                    ),
                ));
            }
        }
        let arch = &manifest.architecture;
        let mut referenced = vec![&arch.stem_file, &arch.head_file, &arch.full_file];
        for b in &arch.blocks {
            referenced.push(&b.file);
            referenced.extend(b.shortcut_file.iter());
        }
        referenced.extend(manifest.policy.as_ref().map(|p| &p.file));
        if let Some(split) = arch.low_level.as_ref().and_then(|l| l.split.as_ref()) {
            referenced.extend([&split.low_file, &split.rest_file]);
        }
        for f in referenced {
            if !manifest.files.contains_key(f) {
                return Err(bundle_error(dir, format!("{f} is used but not listed with a checksum")));
            }
        }
        manifest.validate().map_err(|reason| bundle_error(dir, format!("manifest.json: {reason}")))?;
        Ok(Bundle { dir: dir.to_path_buf(), manifest, hash: sha256_hex(&bytes) })
    }

    /// Path of a bundle file.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
