//! `manifest.json`: one typed struct with a schema version, validated once at load. The format is
//! described for users in `docs/bundle.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost::{BudgetPoint, PathCost};
use crate::input::{Preprocessing, WindowConfig};

/// The manifest schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// How the graphs write 3D convolutions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conv3dLayout {
    /// One `Conv` node with a 3D kernel: the portable form, what GPU providers map to their own 3D
    /// convolutions.
    #[default]
    Native,
    /// A 3D convolution of depth kernel k (depth stride 1, same depth padding) as one 2D `Conv` over
    /// every depth slice with the k depth taps stacked as output channels, then the taps' depth-shifted
    /// sum; the head's resizing as matrix products. Faster on ONNX Runtime's CPU provider, whose 2D
    /// convolutions run on blocked kernels and 3D ones through im2col; slower on GPUs.
    DepthTaps,
}

/// How the graphs write the stem's convolution (7³, stride 2, one input channel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StemForm {
    /// The convolution as trained.
    #[default]
    Conv,
    /// The same sums as space-to-depth (each 2×2×2 block of voxels becomes 8 channels) and a stride-1
    /// 4³ convolution on 8 channels with the weight rearranged (zeros where no tap falls): the form
    /// tensor cores take; exact up to the order of the f32 sums. Needs even tile sizes.
    SpaceToDepth,
}

impl StemForm {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            StemForm::Conv => "conv",
            StemForm::SpaceToDepth => "space-to-depth",
        }
    }
}

/// The number format of the segmenter's graphs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 weights and activations.
    #[default]
    Fp32,
    /// fp16 weights and activations (BatchNorm folded into the convolutions first, then rounded), with
    /// f32 inputs and outputs through casts at each graph's edges, so graphs of either precision chain
    /// and the runtime's buffers stay f32. The policy graph stays f32: the path does not depend on it.
    Fp16,
}

impl Precision {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
        }
    }
}

impl Conv3dLayout {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Conv3dLayout::Native => "native",
            Conv3dLayout::DepthTaps => "depth-taps",
        }
    }
}

impl std::fmt::Display for Conv3dLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3×3×3 convolutions (ResNet-18).
    Basic,
    /// 1×1×1, 3×3×3, 1×1×1 with expansion 4 (ResNet-50).
    Bottleneck,
}

/// Decoder after ASPP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decoder {
    /// The paper's (Med3D's): transposed convolution, convolutions, trilinear upsampling. Bundles from
    /// before the choice existed have it.
    #[default]
    Paper,
    /// DeepLabV3+'s low-level skip from the end of stage 0.
    Skip,
}

impl Decoder {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Decoder::Paper => "paper",
            Decoder::Skip => "skip",
        }
    }
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a policy was trained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMethod {
    /// The paper's REINFORCE with the voxel reward and curriculum.
    Paper,
    /// Ours: per-block keep targets from a measured drop order, learned by cross-entropy.
    #[default]
    Distil,
}

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
    /// How the graphs write 3D convolutions. Older bundles: native.
    #[serde(default)]
    pub conv3d: Conv3dLayout,
    /// How the graphs write the stem's convolution. Older bundles: as trained.
    #[serde(default, skip_serializing_if = "is_default_stem")]
    pub stem: StemForm,
    /// The segmenter graphs' number format. Older bundles: fp32.
    #[serde(default, skip_serializing_if = "is_default_precision")]
    pub precision: Precision,
}

fn is_default_precision(p: &Precision) -> bool {
    *p == Precision::Fp32
}

fn is_default_stem(s: &StemForm) -> bool {
    *s == StemForm::Conv
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
/// the low-level features share that part.
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
    /// Residual block type.
    pub block: BlockKind,
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
    /// The decoder.
    #[serde(default)]
    pub decoder: Decoder,
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
    /// Every graph file the architecture uses.
    pub fn files(&self) -> Vec<&String> {
        let mut files = vec![&self.stem_file, &self.head_file, &self.full_file];
        for b in &self.blocks {
            files.push(&b.file);
            files.extend(b.shortcut_file.iter());
        }
        if let Some(split) = self.low_level.as_ref().and_then(|l| l.split.as_ref()) {
            files.extend([&split.low_file, &split.rest_file]);
        }
        files
    }
}

impl PathCost for Architecture {
    fn stem_and_head_flops(&self) -> u64 {
        self.stem_flops + self.head_flops
    }

    fn block_flops(&self) -> Vec<(u64, u64)> {
        self.blocks.iter().map(|b| (b.branch_flops, b.shortcut_flops)).collect()
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
    /// How the policy input's intensity features were distributed over the same calibration volumes,
    /// and the bound beyond which `--guard` sends a volume to the full network; None for bundles
    /// compiled without data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::Guard>,
    /// Whole-path graphs for the paths the policy took most often on the calibration volumes: the
    /// runtime runs a path that has one as one session instead of the chain of block sessions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path_graphs: Vec<PathGraph>,
    /// With a measured cost (`compile --cost`): keep thresholds against the policy's mean fraction of
    /// the full network's measured time on the calibration volumes, for `--time-budget`. The points'
    /// `flop_fraction` holds the time fraction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_budget: Vec<BudgetPoint>,
}

/// A whole-path graph of the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathGraph {
    /// Keep mask, block 0 first (`11000001`).
    pub mask: String,
    /// Graph file.
    pub file: String,
    /// Calibration volumes that took this path at the bundle's threshold.
    pub volumes: usize,
}

impl PathGraph {
    /// The mask as booleans.
    pub fn keep(&self) -> Vec<bool> {
        self.mask.chars().map(|c| c == '1').collect()
    }
}

impl PolicyEntry {
    /// The lowest keep threshold (so the most blocks, and the best Dice) whose calibrated mean FLOP
    /// fraction is within `budget`.
    pub fn threshold_for_budget(&self, budget: f64) -> crate::Result<f32> {
        BudgetPoint::threshold_for(&self.budget, budget)
    }

    /// The lowest keep threshold whose calibrated mean fraction of the measured time is within `budget`.
    pub fn threshold_for_time_budget(&self, budget: f64) -> crate::Result<f32> {
        if self.time_budget.is_empty() {
            return Err(crate::BundleError::request(
                "time budget",
                "this bundle has no measured cost: compile it with --cost (from autopath bench --calibrate)",
            ));
        }
        BudgetPoint::threshold_for(&self.time_budget, budget)
    }
}

/// What a bundle records of how its policy was trained, so that a deployed bundle can be traced to its
/// settings and validation figures. Fields that older versions did not record read as defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyTraining {
    /// The paper's REINFORCE or our distillation.
    pub method: PolicyMethod,
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
    /// oracles), if any. Kept as JSON: the runtime only shows it, and bundles keep loading when the
    /// study gains fields.
    pub evaluation: Option<serde_json::Value>,
    /// Every graph file with its checksum.
    pub files: BTreeMap<String, FileEntry>,
    /// The graphs' measured times on one provider (`autopath bench --calibrate`, `compile --cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_cost: Option<crate::cost::MeasuredCost>,
}

fn unit(name: &str, v: f32) -> Result<(), String> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} = {v} is not in [0, 1]"))
    }
}

/// A budget calibration: thresholds in [0, 1] ascending, fractions in (0, 1].
fn budget_curve(name: &str, curve: &[BudgetPoint]) -> Result<(), String> {
    for (i, b) in curve.iter().enumerate() {
        unit(&format!("{name}[{i}].threshold"), b.threshold)?;
        if !(b.flop_fraction > 0.0 && b.flop_fraction <= 1.0) {
            return Err(format!("{name}[{i}].flop_fraction = {} is not in (0, 1]", b.flop_fraction));
        }
    }
    if curve.windows(2).any(|w| w[0].threshold >= w[1].threshold) {
        return Err(format!("{name} thresholds are not ascending"));
    }
    Ok(())
}

impl Manifest {
    /// The values the runtime relies on, checked once at load so that no later step can index out of
    /// bounds or divide by zero on a hand-edited manifest. The reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_architecture()?;
        self.input.window.validate().map_err(|e| format!("input.window: {e}"))?;
        unit("input.threshold", self.input.threshold)?;
        if let Some(p) = &self.policy {
            unit("policy.threshold", p.threshold)?;
            if p.input.contains(&0) {
                return Err(format!("policy.input = {:?} has a zero extent", p.input));
            }
            budget_curve("policy.budget", &p.budget)?;
            budget_curve("policy.time_budget", &p.time_budget)?;
            if !p.time_budget.is_empty() && self.measured_cost.is_none() {
                return Err("policy.time_budget without measured_cost".into());
            }
            for (i, g) in p.path_graphs.iter().enumerate() {
                let n = self.architecture.blocks.len();
                if g.mask.len() != n || !g.mask.chars().all(|c| c == '0' || c == '1') {
                    return Err(format!("policy.path_graphs[{i}].mask = {:?} is not a mask of {n} blocks", g.mask));
                }
                if !self.files.contains_key(&g.file) {
                    return Err(format!("policy.path_graphs[{i}].file = {:?} is not among the files", g.file));
                }
            }
        }
        Ok(())
    }

    fn validate_architecture(&self) -> Result<(), String> {
        let arch = &self.architecture;
        if let Some(m) = &self.measured_cost {
            m.validate(arch.blocks.len()).map_err(|e| format!("measured_cost: {e}"))?;
        }
        if arch.blocks.is_empty() {
            return Err("architecture.blocks is empty".into());
        }
        for (n, b) in arch.blocks.iter().enumerate() {
            if b.index != n {
                return Err(format!("architecture.blocks[{n}].index is {}, expected {n}", b.index));
            }
        }
        let Some(l) = &arch.low_level else { return Ok(()) };
        let b = arch.blocks.get(l.after_block).ok_or_else(|| {
            format!("architecture.low_level.after_block = {} is not a block (N = {})", l.after_block, arch.blocks.len())
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
        Ok(())
    }
}
