//! `autopath`: synthesise data, train, evaluate, compile and benchmark.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use autopath::cli::{parse_shape, progress, report};
use autopath::input::preprocess::{Intensity, LabelMapping, Preprocessing};
use autopath::input::window::WindowConfig;
use autopath::study::dataset::{Dataset, Split};
use autopath::study::synth::{synthesize, SynthConfig};
use autopath::study::train::device::DeviceChoice;
use autopath::study::train::segment::{self, plan_split, CaseSplit, TrainConfig};
use autopath_models::spec::{ArchSpec, Output};

/// Data flags shared by `train`, `train-policy` and `eval`.
#[derive(clap::Args, Clone)]
struct DataArgs {
    /// Dataset folder (LiTS, Decathlon or nnU-Net raw layout).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Layout, if detection should be skipped.
    #[arg(long, value_enum)]
    layout: Option<autopath::cli::LayoutArg>,
    /// Test split: a ratio like 0.25, a file listing test case ids, or `3dircadb`.
    #[arg(long, default_value = "0.25")]
    split: String,
    /// Seed for the split, initialisation, crops and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Intensity normalisation: `ct` (clip to [-200, 250] HU, divide by 200) or `zscore` (MRI).
    #[arg(long, default_value = "ct", value_parser = ["ct", "zscore"])]
    intensity: String,
    /// Labels: `merge` (foreground = label > 0, sigmoid) or `keep` (classes, softmax).
    #[arg(long, default_value = "merge", value_parser = ["merge", "keep"])]
    labels: String,
}

impl DataArgs {
    fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            intensity: if self.intensity == "zscore" { Intensity::Zscore } else { Intensity::default() },
            labels: if self.labels == "keep" { LabelMapping::Keep } else { LabelMapping::Merge },
            target_spacing: None,
        }
    }

    fn split(&self) -> anyhow::Result<Split> {
        Ok(self.split.parse::<Split>()?.with_seed(self.seed))
    }
}

#[derive(Parser)]
#[command(
    name = "autopath",
    version,
    about = "Image-specific 3D segmentation: train a segmenter and a block-dropping policy, compile them to ONNX, measure."
)]
struct Cli {
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct DemoArgs {
    /// Output folder (stages found finished there are reused).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// A smoke run in well under two minutes (tiny data and networks).
    #[arg(long)]
    quick: bool,
    /// Redo every stage.
    #[arg(long)]
    fresh: bool,
    /// Where Candle trains: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a
    /// GPU answers, else cpu].
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Phantoms to synthesise.
    #[arg(long)]
    cases: Option<usize>,
    /// Phantom shape D,H,W.
    #[arg(long, value_parser = parse_shape)]
    size: Option<[usize; 3]>,
    /// The segmenter's tile D,H,W (training crops and the sliding window).
    #[arg(long, value_parser = parse_shape)]
    patch: Option<[usize; 3]>,
    /// Segmenter epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Segmenter width.
    #[arg(long)]
    width: Option<usize>,
    /// Policy epochs.
    #[arg(long)]
    policy_epochs: Option<usize>,
    /// Volumes per policy step.
    #[arg(long)]
    policy_batch: Option<usize>,
    /// Epochs per curriculum step.
    #[arg(long)]
    curriculum_epochs: Option<usize>,
    /// Stochastic depth while training the segmenter.
    #[arg(long)]
    drop_path: Option<f64>,
    /// The segmenter's decoder [default: skip].
    #[arg(long, value_enum)]
    decoder: Option<DecoderArg>,
    /// τ of the reward.
    #[arg(long)]
    tau: Option<f64>,
    /// DropRandomN repeats.
    #[arg(long)]
    random_repeats: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of cases.
    #[arg(long, default_value_t = 24)]
    cases: usize,
    /// Seed: the same seed gives the same volumes, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Volume shape D,H,W (slices, rows, columns).
    #[arg(long, default_value = "48,128,128", value_parser = parse_shape)]
    size: [usize; 3],
    /// `ct`: abdominal CT with liver labels; `mr`: T1-like MR heads with a brain label (arbitrary
    /// units and a bias field: train with `--intensity zscore`).
    #[arg(long, default_value = "ct", value_parser = ["ct", "mr"])]
    family: String,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Segmenter run folder.
    #[arg(long)]
    seg: PathBuf,
    /// Policy run folder, one AutoPath row each; repeat to compare methods (e.g. --policy distil
    /// --policy paper).
    #[arg(long, num_args = 1..)]
    policy: Vec<PathBuf>,
    /// Report folder: report.md, results.json, figures.
    #[arg(long)]
    out: PathBuf,
    /// Random masks per dropping level for DropRandomN [default: 100 for N <= 8, 500 otherwise].
    #[arg(long)]
    random_repeats: Option<usize>,
    /// Seed of the random masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tiles per ONNX Runtime call.
    #[arg(long, default_value_t = 4)]
    tile_batch: usize,
    /// Session sets scoring a volume's tile batches at once, the cores shared out between them
    /// [default: the cores, at most 2]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    workers: Option<usize>,
    #[command(flatten)]
    provider: autopath::cli::ProviderArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Bundle folder.
    #[arg(long)]
    bundle: PathBuf,
    /// A dataset folder (its images) or NIfTI files.
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// At most this many volumes.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    provider: autopath::cli::ProviderArgs,
    /// Timed repeats per measurement.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Warm-up runs.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Tiles per network call.
    #[arg(long, default_value_t = 2)]
    tile_batch: usize,
    /// Output folder: bench.md, bench.json, latency plot.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct CompileArgs {
    /// Segmenter run folder (from `autopath train`).
    #[arg(long, required_unless_present = "untrained")]
    seg: Option<PathBuf>,
    /// Instead of --seg: a seeded, untrained network of this architecture (r18, r50) with a
    /// seeded policy, to measure latency at sizes nobody trained here (e.g. the paper's, on a GPU).
    #[arg(long, conflicts_with_all = ["seg", "policy"], value_parser = ["r18", "r34", "r50"])]
    untrained: Option<String>,
    /// Width of the untrained network.
    #[arg(long, default_value_t = 64, requires = "untrained")]
    width: usize,
    /// Tile D,H,W of the untrained network.
    #[arg(long, default_value = "48,256,256", value_parser = parse_shape, requires = "untrained")]
    patch: [usize; 3],
    /// Decoder of the untrained network (as `autopath train --decoder`).
    #[arg(long, value_enum, default_value = "skip", requires = "untrained")]
    decoder: DecoderArg,
    /// Policy run folder (from `autopath train-policy`); without it the bundle runs the full path.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// An `autopath eval` results.json whose summary the manifest records.
    #[arg(long)]
    evaluation: Option<PathBuf>,
    /// Which checkpoint of the segmenter.
    #[arg(long, default_value = "best", value_parser = ["best", "last"])]
    checkpoint: String,
    /// Bundle folder to create.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing bundle folder.
    #[arg(long)]
    force: bool,
    /// Skip the ONNX Runtime parity checks.
    #[arg(long)]
    no_verify: bool,
    /// How the graphs write 3D convolutions: `native` (one 3D Conv each: portable, what GPU providers
    /// map to their 3D kernels) or `depth-taps` (2D Convs over depth slices: ONNX Runtime's CPU provider
    /// runs them on its blocked kernels, `full.onnx` 1.35x faster on the demo's tiles; not measured on
    /// a GPU).
    #[arg(long, value_enum, default_value = "native")]
    conv3d: ConvArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ConvArg {
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
enum DecoderArg {
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
enum MethodArg {
    Paper,
    Distil,
}

#[derive(clap::Args)]
struct PolicyArgs {
    /// Where Candle computes: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a GPU
    /// answers, else cpu].
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Segmenter run folder (from `autopath train`); its data split is used.
    #[arg(long, required_unless_present = "resume")]
    seg: Option<PathBuf>,
    /// Policy run folder.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue a policy run from its last checkpoint.
    #[arg(long, conflicts_with_all = ["out", "seg"])]
    resume: Option<PathBuf>,
    /// How the policy learns: `distil` (ours: scores the paths on every training volume and learns the
    /// cheapest ones within --dice-tolerance of the full network) or `paper` (REINFORCE with the
    /// voxel reward, self-critical baseline and curriculum, exactly as the paper).
    #[arg(long, value_enum, default_value = "distil")]
    method: MethodArg,
    /// distil: largest Dice loss against the full network that a target path may have, per volume.
    #[arg(long, default_value_t = autopath::study::train::policy::DICE_TOLERANCE)]
    dice_tolerance: f64,
    /// paper: penalty τ per wrong voxel (larger keeps more blocks); distil: used only by `eval`'s
    /// reward oracle.
    #[arg(long, default_value_t = 50.0)]
    tau: f64,
    /// Exploration bound α: sampling probabilities stay in [1 − α, α].
    #[arg(long, default_value_t = 0.8)]
    alpha: f64,
    /// Entropy bonus β.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Epochs per curriculum step (one more block is learned every E_c epochs).
    #[arg(long, default_value_t = 10)]
    curriculum_epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Volumes per step (reference code: 1 for R18, 5 for R50). Default 4: with one volume per step the
    /// policy's training-mode BatchNorm normalises each volume by itself, so the pooled features that
    /// should tell volumes apart are nearly constant and every volume gets the same path.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Epochs [default: paper N × curriculum epochs + 20; distil 60].
    #[arg(long)]
    epochs: Option<usize>,
    /// Validate every this many epochs.
    #[arg(long, default_value_t = 5)]
    val_every: usize,
    /// Keep threshold of the greedy path.
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Distil: choose the keep threshold on the validation volumes (0.05 to 0.95; --threshold wins ties).
    #[arg(long)]
    calibrate_threshold: bool,
    /// Distil: deploy --threshold even when it scores below the full network on the validation volumes
    /// (by default the policy is then shifted back along its drop order by the fewest blocks that make
    /// it score above 0 there; failing that, capped at the deepest prefix of its drop order whose mean
    /// Dice loss over the validation volumes is within the tolerance; if none is, every block is kept).
    #[arg(long)]
    no_guard: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tiles per ONNX Runtime call.
    #[arg(long, default_value_t = 4)]
    tile_batch: usize,
    #[command(flatten)]
    provider: autopath::cli::ProviderArgs,
}

fn train_policy(args: PolicyArgs, quiet: bool) -> anyhow::Result<()> {
    use autopath::study::train::policy::{resume_policy, train_policy, PolicyConfig, PolicyEpoch};
    let bar = progress(0, "policy", quiet);
    let on_epoch = |r: &PolicyEpoch| {
        bar.set_length(r.epochs as u64);
        bar.set_position(r.epoch as u64);
        let val = r
            .val_dice
            .map(|d| format!(" | val Dice {d:.4} dropped {:.0} %", 100.0 * r.val_dropped.unwrap_or(0.0)))
            .unwrap_or_default();
        // The paper's method reports its mean sampled reward, ours its cross-entropy.
        let train = match r.loss {
            Some(l) => format!("loss {l:.4}"),
            None => format!("reward {:.4}", r.reward),
        };
        bar.set_message(format!("learning {} blocks, {train}{val}", r.learned));
        if (quiet || bar.is_hidden()) && r.val_dice.is_some() {
            eprintln!(
                "epoch {}/{}: learning {} blocks, {train}, val score {:.4}, val Dice {:.4}, dropped {:.1} %",
                r.epoch,
                r.epochs,
                r.learned,
                r.val_reward.unwrap_or(f64::NAN),
                r.val_dice.unwrap_or(f64::NAN),
                100.0 * r.val_dropped.unwrap_or(0.0)
            );
        }
    };
    let device = open_device(args.device)?;
    let out = if let Some(run) = args.resume {
        resume_policy(&run, args.epochs, &device, &args.provider.options(args.tile_batch), &on_epoch)?;
        run
    } else {
        let seg = args.seg.expect("required");
        let out = args.out.expect("required");
        let spec: autopath::study::train::segment::TrainConfig =
            autopath::study::train::checkpoint::read_json(&seg.join("config.json"))?;
        let n = spec.spec.num_blocks();
        let cfg = PolicyConfig {
            seg: std::path::absolute(&seg)?,
            method: match args.method {
                MethodArg::Paper => autopath::study::train::policy::Method::Paper,
                MethodArg::Distil => autopath::study::train::policy::Method::Distil,
            },
            dice_tolerance: args.dice_tolerance,
            tau: args.tau,
            alpha: args.alpha,
            beta: args.beta,
            curriculum_epochs: args.curriculum_epochs.max(1),
            lr: args.lr,
            batch: args.batch.max(1),
            epochs: args.epochs.unwrap_or(match args.method {
                MethodArg::Paper => n * args.curriculum_epochs.max(1) + 20,
                MethodArg::Distil => autopath::study::train::policy::DISTIL_EPOCHS,
            }),
            val_every: args.val_every,
            seed: args.seed,
            threshold: args.threshold,
            calibrate_threshold: args.calibrate_threshold,
            guard: !args.no_guard,
            tile_batch: args.tile_batch,
        };
        train_policy(cfg, &out, &device, &args.provider.options(args.tile_batch), &on_epoch)?;
        out
    };
    bar.finish_and_clear();
    print_policy_summary(&out)
}

/// The trained policy's best checkpoint in one line, and the validation guard's cap if it applied.
fn print_policy_summary(out: &std::path::Path) -> anyhow::Result<()> {
    use autopath::study::train::policy::PolicyConfig;
    let meta: autopath::study::train::policy::PolicyMeta =
        autopath::study::train::checkpoint::read_json(&out.join("best.json"))?;
    let cfg: PolicyConfig = autopath::study::train::checkpoint::read_json(&out.join("config.json"))?;
    println!(
        "policy trained: best validation score {:.4} at epoch {} (Dice {:.4}, {:.1} % of blocks dropped, keep threshold {}{}); checkpoints in {}",
        meta.best_reward.unwrap_or(f64::NAN),
        meta.best_epoch.unwrap_or(0),
        meta.val_dice.unwrap_or(f64::NAN),
        100.0 * meta.val_dropped.unwrap_or(0.0),
        meta.deployed_threshold(&cfg),
        if meta.threshold.is_some() { ", chosen on validation" } else { "" },
        out.display()
    );
    let forced = meta.forced.iter().filter(|&&f| f).count();
    if cfg.method == autopath::study::train::policy::Method::Distil && !meta.source.is_empty() {
        println!(
            "validation guard: the policy scored below the full network on the validation volumes; it is shifted back along its drop order by {forced} (each volume drops {forced} fewer of the order's blocks than the policy says; the order's last {forced} are always kept)"
        );
    } else if cfg.method == autopath::study::train::policy::Method::Distil && forced > 0 {
        println!(
            "validation guard: the policy scored below the full network on the validation volumes; {forced} of {} blocks are kept whatever it says (those past the deepest drop-order prefix the validation volumes tolerate on average)",
            meta.forced.len()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Where Candle computes: cpu, cuda or cuda:N [default: cuda:0 when this build has CUDA and a GPU
    /// answers, else cpu].
    #[arg(long)]
    device: Option<DeviceChoice>,
    #[command(flatten)]
    data: DataArgs,
    /// Run folder: config.json, best/last checkpoints, log.jsonl.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (other flags but --epochs are ignored).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Backbone: r18 (8 blocks) or r50 (16 blocks).
    #[arg(long, default_value = "r18", value_parser = ["r18", "r34", "r50"])]
    arch: String,
    /// Width of the first stage (64 = the paper's network).
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Decoder: `skip` (DeepLabV3+'s low-level skip from the output of stage 0; the default since it
    /// measured better on the demo and on thin structures) or `paper` (the paper's: ConvTranspose ×2 →
    /// conv → trilinear ×16 in plane).
    #[arg(long, value_enum, default_value = "skip")]
    decoder: DecoderArg,
    /// Training patch D,H,W (the paper: 48,256,256).
    #[arg(long, default_value = "48,256,256", value_parser = parse_shape)]
    patch: [usize; 3],
    /// Epochs, one crop per training case each [default: 400]; with --resume, extends the run.
    #[arg(long)]
    epochs: Option<usize>,
    /// Crops per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Adam learning rate (paper: 0.01).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Decay the learning rate every this many epochs.
    #[arg(long, default_value_t = 100)]
    lr_step: usize,
    /// Decay factor.
    #[arg(long, default_value_t = 0.1)]
    lr_gamma: f64,
    /// Validate every this many epochs.
    #[arg(long, default_value_t = 10)]
    val_every: usize,
    /// Validation cases taken from the training split.
    #[arg(long, default_value_t = 2)]
    val_cases: usize,
    /// Probability that a crop is centred on foreground.
    #[arg(long, default_value_t = 0.5)]
    foreground_fraction: f64,
    /// Sliding-window overlap for validation and inference.
    #[arg(long, default_value_t = 0.5)]
    overlap: f32,
    /// Tiles per network call in validation.
    #[arg(long, default_value_t = 2)]
    tile_batch: usize,
    /// Stochastic depth: probability that a sample skips a block's branch in training (0 = paper).
    #[arg(long, default_value_t = 0.0)]
    drop_path: f64,
}

#[derive(clap::Args)]
struct DeviceCheckArgs {
    /// The device to check: cuda, cuda:N, or cpu (the composed path on the CPU).
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Seeded training steps compared with the CPU kernels (r18, width 16, patch 32,96,96).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Also time a training step at this patch D,H,W (e.g. the paper's 48,256,256).
    #[arg(long, value_parser = parse_shape)]
    time_patch: Option<[usize; 3]>,
    /// Width of the timed network (64 = the paper's).
    #[arg(long, default_value_t = 64)]
    time_width: usize,
    /// Crops per timed step.
    #[arg(long, default_value_t = 2)]
    time_batch: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct StepTimeArgs {
    /// cpu (the CPU kernels), cuda or cuda:N [default: as `train`].
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Backbone: r18, r34 or r50.
    #[arg(long, default_value = "r18")]
    arch: String,
    /// Base width (64 = the paper's).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Patch D,H,W.
    #[arg(long, default_value = "32,96,96", value_parser = parse_shape)]
    patch: [usize; 3],
    /// Crops per step.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Decoder.
    #[arg(long, value_enum, default_value = "skip")]
    decoder: DecoderArg,
    /// Timed steps after one warm-up (medians are reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Keep the CPU convolution kernels to AVX2 on a CPU with AVX-512: the speed of a CPU without it,
    /// measured on this one (`gemm` keeps its AVX-512 code; the numbers are the same).
    #[arg(long)]
    avx2_only: bool,
    /// Also write the times as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn step_time(args: StepTimeArgs) -> anyhow::Result<()> {
    autopath_models::ops::set_avx2_only(args.avx2_only);
    let device = open_device(args.device)?;
    let mut spec = ArchSpec::preset(&args.arch, args.width, args.patch)
        .ok_or_else(|| anyhow::anyhow!("invalid --arch {}: expected r18, r34 or r50", args.arch))?;
    spec.decoder = args.decoder.into();
    let t = autopath::study::train::device_check::time_step(&spec, args.batch, args.repeats, &device)?;
    let [d, h, w] = args.patch;
    println!(
        "{} width {} {}×{}×{} batch {} on {}: step {:.1} ms = forward {:.1} + loss {:.1} + backward {:.1} + Adam {:.1} (backward/forward {:.2})",
        args.arch, args.width, d, h, w, args.batch, if device.is_cpu() { "cpu" } else { "cuda" },
        t.total, t.forward, t.loss, t.backward, t.optimizer, t.backward / t.forward
    );
    if let Some(path) = args.json {
        autopath::study::train::checkpoint::write_json(&path, &t)?;
    }
    Ok(())
}

fn device_check(args: DeviceCheckArgs) -> anyhow::Result<()> {
    use autopath::study::train::device_check::*;
    let device = open_device(args.device)?;
    let mut failed = Vec::new();
    println!("| check | value | tolerance | verdict |\n|---|---:|---:|---|");
    let mut row = |what: &str, value: f64, tol: f64| {
        let ok = value <= tol;
        if !ok {
            failed.push(what.to_string());
        }
        println!("| {what} | {value:.2e} | {tol:.0e} | {} |", if ok { "ok" } else { "FAIL" });
    };
    let ops = check_ops(&device)?;
    for o in &ops {
        row(&format!("{}: output", o.name), o.output, OP_TOLERANCE);
        row(&format!("{}: input gradient", o.name), o.input_grad, OP_TOLERANCE);
        if !o.name.starts_with("max pool") {
            row(&format!("{}: weight gradient", o.name), o.weight_grad, OP_TOLERANCE);
        }
    }
    let spec = ArchSpec::preset("r18", 16, [32, 96, 96]).ok_or_else(|| anyhow::anyhow!("r18 preset"))?;
    let steps = check_steps(&spec, args.steps, 0, &device)?;
    for (i, tol) in [(0, FIRST_STEP_TOLERANCE), (1, SECOND_STEP_TOLERANCE)] {
        if let Some(&r) = steps.rel.get(i) {
            row(&format!("training step {}: loss", i + 1), r, tol);
        }
    }
    // Free-running curves part after two steps (Adam's early updates); shown, not judged. The synced
    // steps are the equality check.
    println!("| training steps 1..{} free-running: mean loss | {:.2e} | | measured |", args.steps, steps.mean_rel);
    let synced = check_synced_steps(&spec, args.steps, 0, &device)?;
    let worst = |v: &[f64]| v.iter().copied().fold(0f64, f64::max);
    row(
        &format!("steps 1..{} from the CPU run's weights: worst loss", args.steps),
        worst(&synced.loss),
        SYNCED_LOSS_TOLERANCE,
    );
    let mut grads = synced.grad.clone();
    grads.sort_by(f64::total_cmp);
    let median = grads.get(grads.len() / 2).copied().unwrap_or(0.0);
    row(
        &format!("steps 1..{} from the CPU run's weights: median gradient (L2, all parameters)", args.steps),
        median,
        SYNCED_GRAD_TOLERANCE,
    );
    println!(
        "| steps 1..{} from the CPU run's weights: worst gradient (shown: near-ties route single gradients differently) | {:.2e} | | measured |",
        args.steps,
        worst(&synced.grad)
    );
    let mut timed = None;
    if let Some(patch) = args.time_patch {
        let spec = ArchSpec::preset("r18", args.time_width, patch).ok_or_else(|| anyhow::anyhow!("r18 preset"))?;
        let ms = time_step(&spec, args.time_batch, 3, &device)?.total;
        println!(
            "| training step r18 width {}, {}×{}×{}, batch {} | {ms:.0} ms | | measured |",
            args.time_width, patch[0], patch[1], patch[2], args.time_batch
        );
        timed = Some(ms);
    }
    if let Some(path) = args.json {
        let v = serde_json::json!({ "ops": ops, "steps": steps, "synced": synced, "step_ms": timed });
        autopath::study::train::checkpoint::write_json(&path, &v)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("device check failed: {}", failed.join(", "))
    }
}

/// Opens the Candle device and says which one was chosen.
fn open_device(choice: Option<DeviceChoice>) -> anyhow::Result<candle_core::Device> {
    let (device, why) = autopath::study::train::device::open(choice)?;
    eprintln!("device: {why}");
    Ok(device)
}

fn train(args: TrainArgs, quiet: bool) -> anyhow::Result<()> {
    let bar = progress(0, "train", quiet);
    let on_epoch = |r: &segment::EpochReport| {
        bar.set_length(r.epochs as u64);
        bar.set_position(r.epoch as u64);
        let val = r.val_dice.map(|d| format!(" val Dice {d:.4}")).unwrap_or_default();
        bar.set_message(format!("loss {:.4}{val}", r.loss));
        if quiet || bar.is_hidden() {
            if let Some(d) = r.val_dice {
                eprintln!("epoch {}/{}: loss {:.4}, val Dice {d:.4}, {:.1} s", r.epoch, r.epochs, r.loss, r.seconds);
            }
        }
    };
    let device = open_device(args.device)?;
    let (summary, out) = if let Some(run) = args.resume {
        (segment::resume(&run, args.epochs, &device, &on_epoch)?, run)
    } else {
        let data = args.data;
        let folder = data.data.clone().ok_or_else(|| anyhow::anyhow!("--data is required (or --resume RUN)"))?;
        let out = args.out.ok_or_else(|| anyhow::anyhow!("--out is required (or --resume RUN)"))?;
        let mut spec = ArchSpec::preset(&args.arch, args.width, args.patch)
            .ok_or_else(|| anyhow::anyhow!("unknown --arch {}", args.arch))?;
        spec.decoder = args.decoder.into();
        let prep = data.preprocessing();
        if prep.labels == LabelMapping::Keep {
            spec.output = Output::Softmax { classes: 3 };
        }
        let dataset = Dataset::open(&folder, data.layout.map(Into::into))?;
        let (train_ids, val_ids, test_ids) = plan_split(&dataset, &data.split()?, args.val_cases, data.seed)?;
        let split = CaseSplit { train: train_ids, val: val_ids, test: test_ids };
        let base = TrainConfig::new(spec, std::path::absolute(&folder)?, dataset.layout, split);
        let cfg = TrainConfig {
            preprocessing: prep,
            window: WindowConfig { overlap: args.overlap, ..base.window },
            epochs: args.epochs.unwrap_or(base.epochs),
            batch: args.batch.max(1),
            lr: args.lr,
            lr_step: args.lr_step,
            lr_gamma: args.lr_gamma,
            val_every: args.val_every,
            foreground_fraction: args.foreground_fraction,
            seed: data.seed,
            tile_batch: args.tile_batch,
            drop_path: args.drop_path,
            ..base
        };
        (segment::train(cfg, &out, &device, &on_epoch)?, out)
    };
    bar.finish_and_clear();
    println!(
        "trained {} epochs in {:.0} s; best validation Dice {} (epoch {}); checkpoints in {}",
        summary.epochs,
        summary.seconds,
        summary.best_dice.map_or("-".into(), |d| format!("{d:.4}")),
        summary.best_epoch.map_or("-".into(), |e| e.to_string()),
        out.display()
    );
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Synth(args) => synth(args, cli.quiet),
        Command::Train(args) => train(args, cli.quiet),
        Command::Demo(args) => demo(args),
        Command::TrainPolicy(args) => train_policy(args, cli.quiet),
        Command::DeviceCheck(args) => device_check(args),
        Command::StepTime(args) => step_time(args),
        Command::Bench(args) => bench(args),
        Command::Eval(args) => eval(args, cli.quiet),
        Command::Compile(args) => compile(args),
        Command::Inspect { bundle, json, tile_batch } => inspect(&bundle, json, tile_batch),
    }
}

fn synth(args: SynthArgs, quiet: bool) -> anyhow::Result<()> {
    let SynthArgs { out, cases, seed, size, family } = args;
    let family = if family == "mr" { autopath::study::synth::Family::Mr } else { autopath::study::synth::Family::Ct };
    let cfg = SynthConfig { cases, seed, size, family };
    let bar = progress(cases as u64, "synth", quiet);
    let infos = synthesize(&out, &cfg, &|done| bar.set_position(done as u64))
        .with_context(|| format!("synthesising into {}", out.display()))?;
    bar.finish_and_clear();
    let mean_liver = infos.iter().map(|i| i.liver_fraction).sum::<f32>() / infos.len() as f32;
    println!(
        "wrote {} phantoms of {:?} to {} (mean liver fraction {:.3})",
        infos.len(),
        size,
        out.display(),
        mean_liver
    );
    Ok(())
}

fn demo(args: DemoArgs) -> anyhow::Result<()> {
    use autopath::study::demo::{run, DemoOptions};
    let out = args.out.clone();
    let mut o = if args.quick { DemoOptions::quick(out.clone()) } else { DemoOptions::standard(out.clone()) };
    o.fresh = args.fresh;
    o.device = open_device(args.device)?;
    o.cases = args.cases.unwrap_or(o.cases);
    o.size = args.size.unwrap_or(o.size);
    o.patch = args.patch.unwrap_or(o.patch);
    o.epochs = args.epochs.unwrap_or(o.epochs);
    o.width = args.width.unwrap_or(o.width);
    o.policy_epochs = args.policy_epochs.unwrap_or(o.policy_epochs);
    o.policy_batch = args.policy_batch.unwrap_or(o.policy_batch).max(1);
    o.curriculum_epochs = args.curriculum_epochs.unwrap_or(o.curriculum_epochs);
    o.drop_path = args.drop_path.unwrap_or(o.drop_path);
    o.decoder = args.decoder.map_or(o.decoder, Into::into);
    o.tau = args.tau.unwrap_or(o.tau);
    o.random_repeats = args.random_repeats.unwrap_or(o.random_repeats);
    o.seed = args.seed.unwrap_or(o.seed);
    let t = std::time::Instant::now();
    let r = run(&o, &|line| eprintln!("{line}"))?;
    println!("\nTable 1 (test volumes {}):\n{}", r.eval.test_ids.join(", "), r.eval.table1_text());
    println!("Latency (CPU, ONNX Runtime):\n{}", autopath::study::bench::markdown(&r.bench));
    println!("report:        {}", out.join("eval/report.md").display());
    println!("figures:       {}", out.join("eval").display());
    println!("bundle:        {}", out.join("bundle").display());
    println!("segmentations: {}", out.join("segmentations").display());
    println!("benchmark:     {}", out.join("bench/bench.md").display());
    println!("demo finished in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { bundle, data, limit, provider, repeats, warmup, tile_batch, out } = args;
    let inputs = bench_inputs(&data, limit)?;
    let opts =
        autopath::study::bench::BenchOptions { repeats, warmup, session: provider.options(tile_batch), tile_batch };
    let report = autopath::study::bench::bench(&bundle, &inputs, &out, &opts)?;
    autopath::study::bench::write(&out, &report)?;
    println!("{}", autopath::study::bench::markdown(&report));
    Ok(())
}

fn eval(args: EvalArgs, quiet: bool) -> anyhow::Result<()> {
    let EvalArgs { seg, policy, out, random_repeats, seed, tile_batch, workers, provider } = args;
    let opts = autopath::study::eval::EvalOptions {
        seg,
        policies: policy,
        out: out.clone(),
        random_repeats,
        seed,
        tile_batch,
        workers,
        session: provider.options(tile_batch),
    };
    let bar = progress(0, "eval", quiet);
    let r = autopath::study::eval::evaluate(&opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("{}", r.table1_text());
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let CompileArgs {
        seg,
        untrained,
        width,
        patch,
        decoder,
        policy,
        evaluation,
        checkpoint,
        out,
        force,
        no_verify,
        conv3d,
    } = args;
    let opts =
        autopath::study::compile::CompileOptions { verify: !no_verify, force, conv: conv3d.into(), split_head: false };
    if let Some(arch) = untrained {
        return compile_untrained(&arch, width, patch, decoder.into(), &out, opts);
    }
    let seg = seg.ok_or_else(|| anyhow::anyhow!("--seg is required (or --untrained ARCH)"))?;
    let report = autopath::study::packaging::compile_runs(
        &seg,
        &checkpoint,
        policy.as_deref(),
        evaluation.as_deref(),
        &out,
        opts,
    )?;
    for c in &report.checks {
        println!("  {}  {}", c.describe(), if c.passed { "ok" } else { "FAILED" });
    }
    println!(
        "compiled {} graphs into {} in {:.1} s: {:.1} MB ({:.2}x the {:.1} MB of fp32 weights)",
        report.files,
        out.display(),
        report.seconds,
        report.bundle_bytes as f64 / 1e6,
        report.bundle_bytes as f64 / report.weight_bytes as f64,
        report.weight_bytes as f64 / 1e6
    );
    Ok(())
}

/// A bundle of a seeded, untrained network and policy: the graphs and costs of a trained one, for
/// latency measurements.
fn compile_untrained(
    arch: &str,
    width: usize,
    patch: [usize; 3],
    decoder: autopath_models::spec::DecoderKind,
    out: &std::path::Path,
    opts: autopath::study::compile::CompileOptions,
) -> anyhow::Result<()> {
    use candle_core::{DType, Device};
    let mut spec =
        ArchSpec::preset(arch, width, patch).ok_or_else(|| anyhow::anyhow!("unknown architecture {arch}"))?;
    spec.decoder = decoder;
    let model = segment::Model::new(&spec, 1, &Device::Cpu)?;
    let vars = autopath_models::init::SeededVarMap::new(2);
    let policy = autopath_models::policy::PolicyNet::load(vars.var_builder(DType::F32, &Device::Cpu), &spec)?;
    let input = autopath::study::compile::PolicyInput { net: &policy, threshold: 0.5, training: None };
    let report =
        autopath::study::compile::compile(&model.net, &TrainConfig::for_spec(spec), Some(input), None, out, opts)?;
    println!(
        "compiled an untrained {arch} (width {width}, {decoder:?} decoder, tile {patch:?}): {} graphs into {} in {:.1} s",
        report.files,
        out.display(),
        report.seconds
    );
    Ok(())
}

/// Image files to benchmark: a dataset folder's images, other folders' NIfTI files, or files.
fn bench_inputs(data: &[PathBuf], limit: Option<usize>) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in data {
        if d.is_dir() {
            match Dataset::open(d, None) {
                Ok(ds) => out.extend(ds.cases.into_iter().map(|c| c.image)),
                Err(_) => out.extend(autopath::deploy::batch::plan(d, d, None)?.into_iter().map(|(i, _)| i)),
            }
        } else {
            out.push(d.clone());
        }
    }
    if let Some(l) = limit {
        out.truncate(l);
    }
    Ok(out)
}

fn inspect(dir: &std::path::Path, json: bool, tile_batch: usize) -> anyhow::Result<()> {
    let b = autopath_bundle::Bundle::load(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&b.manifest)?);
    } else {
        print!("{}", autopath::deploy::inspect::describe(&b, tile_batch));
    }
    Ok(())
}

fn main() -> ExitCode {
    autopath::deploy::heap::keep_freed_buffers();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}
