//! The command line of `autopath`: clap's argument types and how they become the library's
//! settings. The commands themselves are in `main.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use autopath::cli::parse_shape;
use autopath::input::preprocess::{Intensity, LabelMapping, Preprocessing};
use autopath::study::dataset::Split;
use autopath::study::train::device::DeviceChoice;

/// Data flags shared by `train`, `train-policy` and `eval`.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// Dataset folder (LiTS, Decathlon or nnU-Net raw layout).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Layout, if detection should be skipped.
    #[arg(long, value_enum)]
    pub layout: Option<autopath::cli::LayoutArg>,
    /// Test split: a ratio like 0.25, a file listing test case ids, or `3dircadb`.
    #[arg(long, default_value = "0.25")]
    pub split: String,
    /// Seed for the split, initialisation, crops and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Intensity normalisation: `ct` (clip to [-200, 250] HU, divide by 200) or `zscore` (MRI).
    #[arg(long, default_value = "ct", value_parser = ["ct", "zscore"])]
    pub intensity: String,
    /// Labels: `merge` (foreground = label > 0, sigmoid) or `keep` (classes, softmax).
    #[arg(long, default_value = "merge", value_parser = ["merge", "keep"])]
    pub labels: String,
}

impl DataArgs {
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            intensity: if self.intensity == "zscore" { Intensity::Zscore } else { Intensity::default() },
            labels: if self.labels == "keep" { LabelMapping::Keep } else { LabelMapping::Merge },
            target_spacing: None,
        }
    }

    pub fn split(&self) -> anyhow::Result<Split> {
        Ok(self.split.parse::<Split>()?.with_seed(self.seed))
    }
}

#[derive(Parser)]
#[command(
    name = "autopath",
    version,
    about = "Image-specific 3D segmentation: train a segmenter and a block-dropping policy, compile them to ONNX, measure."
)]
pub struct Cli {
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The whole product on synthetic data: synth, train, train-policy, eval, compile, run, bench.
    Demo(DemoArgs),
    /// Write synthetic abdominal CT phantoms with liver labels in the LiTS layout.
    Synth(SynthArgs),
    /// Train the segmenter (3D DeepLab V3 on a ResNet backbone).
    Train(TrainArgs),
    /// Train the block-dropping policy on a frozen segmenter (distilled paths, or the paper's REINFORCE).
    TrainPolicy(PolicyArgs),
    /// Check Candle training on a device against the CPU kernels: every conv/pool shape with
    /// gradients, a seeded loss curve, and the time of a step. `--device cpu` checks the composed
    /// path that CUDA runs, on the CPU.
    DeviceCheck(DeviceCheckArgs),
    /// Time one training step (forward, loss, backward, Adam) of a network on a device, phase by
    /// phase: the Candle side of `scripts/torch-step-compare`.
    StepTime(StepTimeArgs),
    /// Reproduce the paper's study on the test split: heuristics vs AutoPath, Table 1, figures.
    Eval(EvalArgs),
    /// Measure AutoPath's latency against the full backbone with the runtime's code.
    Bench(BenchArgs),
    /// Export trained models as a deployable bundle of ONNX graphs (one per block) with a manifest.
    Compile(CompileArgs),
    /// Print a bundle's manifest and verify its checksums.
    Inspect {
        /// Bundle folder.
        bundle: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Tiles per call for the GPU memory estimate (as `autopath-run --tile-batch`).
        #[arg(long, default_value_t = 2)]
        tile_batch: usize,
    },
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Output folder (stages found finished there are reused).
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// A smoke run in well under two minutes (tiny data and networks).
    #[arg(long)]
    pub quick: bool,
    /// Redo every stage.
    #[arg(long)]
    pub fresh: bool,
    /// Where Candle trains: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a
    /// GPU answers, else cpu].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Phantoms to synthesise.
    #[arg(long)]
    pub cases: Option<usize>,
    /// Phantom shape D,H,W.
    #[arg(long, value_parser = parse_shape)]
    pub size: Option<[usize; 3]>,
    /// The segmenter's tile D,H,W (training crops and the sliding window).
    #[arg(long, value_parser = parse_shape)]
    pub patch: Option<[usize; 3]>,
    /// Segmenter epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Segmenter width.
    #[arg(long)]
    pub width: Option<usize>,
    /// Policy epochs.
    #[arg(long)]
    pub policy_epochs: Option<usize>,
    /// Volumes per policy step.
    #[arg(long)]
    pub policy_batch: Option<usize>,
    /// Epochs per curriculum step.
    #[arg(long)]
    pub curriculum_epochs: Option<usize>,
    /// Stochastic depth while training the segmenter.
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// The segmenter's decoder [default: skip].
    #[arg(long, value_enum)]
    pub decoder: Option<DecoderArg>,
    /// τ of the reward.
    #[arg(long)]
    pub tau: Option<f64>,
    /// DropRandomN repeats.
    #[arg(long)]
    pub random_repeats: Option<usize>,
    /// Seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Several seeds, one demo each in OUT/seed-S, then the seeds table (OUT/seeds.md, seeds.json):
    /// per seed our policy's saving, Dice loss, paths and Dice against the heuristics at the same
    /// FLOP fraction, and the mean ± std.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Phantoms: `ct` (abdominal CT, liver) or `mr` (MR heads, brain; z-scored intensities).
    #[arg(long, default_value = "ct", value_parser = ["ct", "mr"])]
    pub family: String,
    /// The hardest phantom's difficulty, in (0, 1]: contrast, noise and size spread evenly up to it.
    #[arg(long)]
    pub max_difficulty: Option<f32>,
    /// Number format of the segmenter's convolutions on CUDA (as `train --precision`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: TrainPrecisionArg,
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 24)]
    pub cases: usize,
    /// Seed: the same seed gives the same volumes, bit for bit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Volume shape D,H,W (slices, rows, columns).
    #[arg(long, default_value = "48,128,128", value_parser = parse_shape)]
    pub size: [usize; 3],
    /// `ct`: abdominal CT with liver labels; `mr`: T1-like MR heads with a brain label (arbitrary
    /// units and a bias field: train with `--intensity zscore`).
    #[arg(long, default_value = "ct", value_parser = ["ct", "mr"])]
    pub family: String,
    /// The hardest case's difficulty, in (0, 1]: cases spread evenly over [0, this].
    #[arg(long, default_value_t = 1.0)]
    pub max_difficulty: f32,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Segmenter run folder.
    #[arg(long)]
    pub seg: PathBuf,
    /// Policy run folder, one AutoPath row each; repeat to compare methods (e.g. --policy distil
    /// --policy paper).
    #[arg(long, num_args = 1..)]
    pub policy: Vec<PathBuf>,
    /// Report folder: report.md, results.json, figures.
    #[arg(long)]
    pub out: PathBuf,
    /// Random masks per dropping level for DropRandomN [default: 100 for N <= 8, 500 otherwise].
    #[arg(long)]
    pub random_repeats: Option<usize>,
    /// Seed of the random masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tiles per ONNX Runtime call.
    #[arg(long, default_value_t = 4)]
    pub tile_batch: usize,
    /// Session sets scoring a volume's tile batches at once, the cores shared out between them
    /// [default: the cores, at most 2]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub provider: autopath::cli::ProviderArgs,
    /// The graphs' measured times (`cost.json` from `autopath bench --calibrate` on a bundle of this
    /// segmenter): the report adds the Pareto figure against measured time.
    #[arg(long)]
    pub cost: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Bundle folder.
    #[arg(long)]
    pub bundle: PathBuf,
    /// A dataset folder (its images) or NIfTI files.
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// At most this many volumes.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub provider: autopath::cli::ProviderArgs,
    /// Timed repeats per measurement.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Warm-up runs.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Tiles per network call.
    #[arg(long, default_value_t = 2)]
    pub tile_batch: usize,
    /// Output folder: bench.md, bench.json, latency plot (with --calibrate: cost.json, cost.md).
    #[arg(long)]
    pub out: PathBuf,
    /// Time each graph of the bundle (stem, every block and projection shortcut, head, full.onnx) on
    /// this provider instead of benchmarking volumes: writes cost.json for `autopath compile --cost`.
    #[arg(long)]
    pub calibrate: bool,
}

#[derive(clap::Args)]
pub struct CompileArgs {
    /// Segmenter run folder (from `autopath train`).
    #[arg(long, required_unless_present = "untrained")]
    pub seg: Option<PathBuf>,
    /// Instead of --seg: a seeded, untrained network of this architecture (r18, r50) with a
    /// seeded policy, to measure latency at sizes nobody trained here (e.g. the paper's, on a GPU).
    #[arg(long, conflicts_with_all = ["seg", "policy"], value_parser = ["r18", "r34", "r50"])]
    pub untrained: Option<String>,
    /// Width of the untrained network.
    #[arg(long, default_value_t = 64, requires = "untrained")]
    pub width: usize,
    /// Tile D,H,W of the untrained network.
    #[arg(long, default_value = "48,256,256", value_parser = parse_shape, requires = "untrained")]
    pub patch: [usize; 3],
    /// Decoder of the untrained network (as `autopath train --decoder`).
    #[arg(long, value_enum, default_value = "skip", requires = "untrained")]
    pub decoder: DecoderArg,
    /// Policy run folder (from `autopath train-policy`); without it the bundle runs the full path.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// An `autopath eval` results.json whose summary the manifest records.
    #[arg(long)]
    pub evaluation: Option<PathBuf>,
    /// Which checkpoint of the segmenter.
    #[arg(long, default_value = "best", value_parser = ["best", "last"])]
    pub checkpoint: String,
    /// Bundle folder to create.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing bundle folder.
    #[arg(long)]
    pub force: bool,
    /// Skip the ONNX Runtime parity checks.
    #[arg(long)]
    pub no_verify: bool,
    /// How the graphs write 3D convolutions: `native` (one 3D Conv each: portable, what GPU providers
    /// map to their 3D kernels) or `depth-taps` (2D Convs over depth slices: ONNX Runtime's CPU provider
    /// runs them on its blocked kernels, `full.onnx` 1.35x faster on the demo's tiles; not measured on
    /// a GPU).
    #[arg(long, value_enum, default_value = "native")]
    pub conv3d: ConvArg,
    /// Whole-path graphs for the paths the policy takes most often on the calibration volumes: a path
    /// with one runs as one ONNX Runtime session instead of one per block (0: none).
    #[arg(long, default_value_t = autopath::study::compile::DEFAULT_PATH_GRAPHS)]
    pub path_graphs: usize,
    /// The graphs' measured times (`cost.json` from `autopath bench --calibrate` on the provider the
    /// bundle will run on): stored in the manifest with the policy's time-budget curve, for
    /// `autopath-run --time-budget`.
    #[arg(long)]
    pub cost: Option<PathBuf>,
    /// How the graphs write the stem's 7³ stride-2 convolution of one channel: `conv` (as trained) or
    /// `space-to-depth` (2×2×2 voxels to 8 channels, then a stride-1 4³ convolution: the same sums in the
    /// form GPU tensor cores take; checked like every graph against the f64 model; even tile sizes).
    #[arg(long, value_enum, default_value = "conv")]
    pub stem: StemArg,
    /// The segmenter graphs' number format: `fp32`, or `fp16` (weights and activations in fp16 with
    /// f32 inputs and outputs; the policy stays f32; checked against the f64 model at fp16's tolerance).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
}

/// `compile --precision`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Fp16,
}

impl From<PrecisionArg> for autopath_bundle::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::Fp32 => autopath_bundle::Precision::Fp32,
            PrecisionArg::Fp16 => autopath_bundle::Precision::Fp16,
        }
    }
}

/// `compile --stem`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StemArg {
    Conv,
    SpaceToDepth,
}

impl From<StemArg> for autopath_bundle::StemForm {
    fn from(s: StemArg) -> Self {
        match s {
            StemArg::Conv => autopath_bundle::StemForm::Conv,
            StemArg::SpaceToDepth => autopath_bundle::StemForm::SpaceToDepth,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvArg {
    Native,
    DepthTaps,
}

impl From<ConvArg> for autopath_bundle::Conv3dLayout {
    fn from(c: ConvArg) -> Self {
        match c {
            ConvArg::Native => autopath_bundle::Conv3dLayout::Native,
            ConvArg::DepthTaps => autopath_bundle::Conv3dLayout::DepthTaps,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DecoderArg {
    /// The paper's: ConvTranspose ×2 → conv → trilinear upsampling from stride 4 × 32 × 32.
    Paper,
    /// DeepLabV3+'s low-level skip from the output of stage 0.
    Skip,
}

impl From<DecoderArg> for autopath_models::spec::DecoderKind {
    fn from(d: DecoderArg) -> Self {
        match d {
            DecoderArg::Paper => Self::Paper,
            DecoderArg::Skip => Self::Skip,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    Paper,
    Distil,
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// Where Candle computes: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a GPU
    /// answers, else cpu].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Segmenter run folder (from `autopath train`); its data split is used.
    #[arg(long, required_unless_present = "resume")]
    pub seg: Option<PathBuf>,
    /// Policy run folder.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue a policy run from its last checkpoint.
    #[arg(long, conflicts_with_all = ["out", "seg"])]
    pub resume: Option<PathBuf>,
    /// How the policy learns: `distil` (ours: scores the paths on every training volume and learns the
    /// cheapest ones within --dice-tolerance of the full network) or `paper` (REINFORCE with the
    /// voxel reward, self-critical baseline and curriculum, exactly as the paper).
    #[arg(long, value_enum, default_value = "distil")]
    pub method: MethodArg,
    /// distil: largest Dice loss against the full network that a target path may have, per volume.
    #[arg(long, default_value_t = autopath::study::train::policy::DICE_TOLERANCE)]
    pub dice_tolerance: f64,
    /// paper: penalty τ per wrong voxel (larger keeps more blocks); distil: used only by `eval`'s
    /// reward oracle.
    #[arg(long, default_value_t = 50.0)]
    pub tau: f64,
    /// Exploration bound α: sampling probabilities stay in [1 − α, α].
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// Entropy bonus β.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Epochs per curriculum step (one more block is learned every E_c epochs).
    #[arg(long, default_value_t = 10)]
    pub curriculum_epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Volumes per step (reference code: 1 for R18, 5 for R50). Default 4: with one volume per step the
    /// policy's training-mode BatchNorm normalises each volume by itself, so the pooled features that
    /// should tell volumes apart are nearly constant and every volume gets the same path.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Epochs [default: paper N × curriculum epochs + 20; distil 60].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Validate every this many epochs.
    #[arg(long, default_value_t = 5)]
    pub val_every: usize,
    /// Keep threshold of the greedy path.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Distil: choose the keep threshold on the validation volumes (0.05 to 0.95; --threshold wins ties).
    #[arg(long)]
    pub calibrate_threshold: bool,
    /// Distil: deploy --threshold even when it scores below the full network on the validation volumes
    /// (by default the policy is then shifted back along its drop order by the fewest blocks that make
    /// it score above 0 there; failing that, capped at the deepest prefix of its drop order whose mean
    /// Dice loss over the validation volumes is within the tolerance; if none is, every block is kept).
    #[arg(long)]
    pub no_guard: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tiles per ONNX Runtime call.
    #[arg(long, default_value_t = 4)]
    pub tile_batch: usize,
    #[command(flatten)]
    pub provider: autopath::cli::ProviderArgs,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Where Candle computes: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a GPU
    /// answers, else cpu].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Run folder: config.json, best/last checkpoints, log.jsonl.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (other flags but --epochs are ignored).
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Backbone: r18 (8 blocks) or r50 (16 blocks).
    #[arg(long, default_value = "r18", value_parser = ["r18", "r34", "r50"])]
    pub arch: String,
    /// Width of the first stage (64 = the paper's network).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Decoder: `skip` (DeepLabV3+'s low-level skip from the output of stage 0; the default since it
    /// measured better on the demo and on thin structures) or `paper` (the paper's: ConvTranspose ×2 →
    /// conv → trilinear ×16 in plane).
    #[arg(long, value_enum, default_value = "skip")]
    pub decoder: DecoderArg,
    /// Training patch D,H,W (the paper: 48,256,256).
    #[arg(long, default_value = "48,256,256", value_parser = parse_shape)]
    pub patch: [usize; 3],
    /// Epochs, one crop per training case each [default: 400]; with --resume, extends the run.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Crops per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Adam learning rate (paper: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// Decay the learning rate every this many epochs.
    #[arg(long, default_value_t = 100)]
    pub lr_step: usize,
    /// Decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Validate every this many epochs.
    #[arg(long, default_value_t = 10)]
    pub val_every: usize,
    /// Validation cases taken from the training split.
    #[arg(long, default_value_t = 2)]
    pub val_cases: usize,
    /// Probability that a crop is centred on foreground.
    #[arg(long, default_value_t = 0.5)]
    pub foreground_fraction: f64,
    /// Sliding-window overlap for validation and inference.
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f32,
    /// Tiles per network call in validation.
    #[arg(long, default_value_t = 2)]
    pub tile_batch: usize,
    /// Stochastic depth: probability that a sample skips a block's branch in training (0 = paper).
    #[arg(long, default_value_t = 0.0)]
    pub drop_path: f64,
    /// Voxel spacing the network sees: `median` (the training volumes' median, as nnU-Net), `none`
    /// (each volume at its own grid) or D,H,W in mm. Stored in the run and the bundle; the runtime
    /// resamples each input to it and the probabilities back to the input's grid.
    #[arg(long, default_value = "median")]
    pub spacing: autopath::study::dataset::SpacingChoice,
    /// Label names, index = label value, e.g. background,liver,tumour (default: the data set's
    /// dataset.json, else background,liver). With merged labels the foreground names are joined by `+`.
    #[arg(long, value_delimiter = ',')]
    pub label_names: Option<Vec<String>>,
    /// Image modality for the bundle, e.g. CT or MR (default: dataset.json's, else from --intensity).
    #[arg(long)]
    pub modality: Option<String>,
    /// Number format of the convolutions on CUDA: fp32, tf32 (TF32 tensor cores) or bf16 (bf16
    /// convolutions; weights, BatchNorm and the loss in f32). The CPU kernels compute in f32 only.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: TrainPrecisionArg,
}

/// `train --precision`, `step-time --precision`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainPrecisionArg {
    Fp32,
    Tf32,
    Bf16,
}

impl From<TrainPrecisionArg> for autopath_models::ops::TrainPrecision {
    fn from(p: TrainPrecisionArg) -> Self {
        match p {
            TrainPrecisionArg::Fp32 => autopath_models::ops::TrainPrecision::Fp32,
            TrainPrecisionArg::Tf32 => autopath_models::ops::TrainPrecision::Tf32,
            TrainPrecisionArg::Bf16 => autopath_models::ops::TrainPrecision::Bf16,
        }
    }
}

#[derive(clap::Args)]
pub struct DeviceCheckArgs {
    /// The device to check: cuda, cuda:N, or cpu (the composed path on the CPU).
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Seeded training steps compared with the CPU kernels (r18, width 16, patch 32,96,96).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Also time a training step at this patch D,H,W (e.g. the paper's 48,256,256).
    #[arg(long, value_parser = parse_shape)]
    pub time_patch: Option<[usize; 3]>,
    /// Width of the timed network (64 = the paper's).
    #[arg(long, default_value_t = 64)]
    pub time_width: usize,
    /// Crops per timed step.
    #[arg(long, default_value_t = 2)]
    pub time_batch: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StepTimeArgs {
    /// cpu (the CPU kernels), cuda or cuda:N [default: as `train`].
    #[arg(long)]
    pub device: Option<DeviceChoice>,
    /// Backbone: r18, r34 or r50.
    #[arg(long, default_value = "r18")]
    pub arch: String,
    /// Base width (64 = the paper's).
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// Patch D,H,W.
    #[arg(long, default_value = "32,96,96", value_parser = parse_shape)]
    pub patch: [usize; 3],
    /// Crops per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Decoder.
    #[arg(long, value_enum, default_value = "skip")]
    pub decoder: DecoderArg,
    /// Timed steps after one warm-up (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Keep the CPU convolution kernels to AVX2 on a CPU with AVX-512: the speed of a CPU without it,
    /// measured on this one (`gemm` keeps its AVX-512 code; the numbers are the same).
    #[arg(long)]
    pub avx2_only: bool,
    /// Number format of the convolutions on CUDA (as `train --precision`).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: TrainPrecisionArg,
    /// Also write the times as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}
