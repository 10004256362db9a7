//! `autopath-run`: the deployable runtime. Links ONNX Runtime (loaded at start-up), never Candle.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use autopath::cli::{progress, report, ProviderArgs, TrustArgs};
use autopath::deploy::batch::{
    check_output, check_outputs, default_prefetch, plan, run_batch, BatchOptions, Event, Plan, Shard,
};
use autopath::deploy::{PathChoice, Predictor, PredictorOptions};
use autopath::input::source::OutputType;
use autopath::input::volume::ReadOptions;

#[derive(Parser)]
#[command(
    name = "autopath-run",
    version,
    about = "Segment NIfTI volumes and DICOM series with a compiled AutoPath bundle: the policy picks the blocks, ONNX Runtime runs only those.",
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  autopath-run --bundle bundle -i scans/ -o masks/\n  autopath-run --bundle bundle -i ct.nii.gz -o ct_seg.nii.gz --path full\n  autopath-run --bundle bundle -i cohort/ -o out/ --shard $SLURM_ARRAY_TASK_ID/8 --continue\n  autopath-run --bundle bundle -i dicom/study/ -o segs/ --output-type dicom-seg"
)]
struct Cli {
    /// Bundle folder (from `autopath compile`).
    #[arg(long, required_unless_present = "check_ort")]
    bundle: Option<PathBuf>,
    /// Input: a .nii/.nii.gz file or a folder of them; or DICOM: a file (its series), a folder of one
    /// series, or a folder tree of many (one output per series).
    #[arg(short, long, required_unless_present = "check_ort")]
    input: Option<PathBuf>,
    /// Output: a file (for one input) or a folder (created if missing).
    #[arg(short, long, required_unless_present = "check_ort")]
    output: Option<PathBuf>,
    /// What to write: a NIfTI label map on the input's grid, or a DICOM SEG that references the source
    /// series (DICOM inputs only; one segment per label, named as in the bundle).
    #[arg(long, default_value = "nifti")]
    output_type: OutputType,
    /// Block path: `auto` (the policy), `full`, or a mask like 11011111.
    #[arg(long, default_value = "auto")]
    path: PathChoice,
    /// Keep threshold for the policy's probabilities (default: the bundle's). For experts: --budget
    /// says the same in FLOPs.
    #[arg(long, conflicts_with = "budget")]
    threshold: Option<f32>,
    /// Mean fraction of the full network's FLOPs to spend, e.g. 0.7: mapped to a keep threshold by the
    /// bundle's calibration (made at compile time on the segmenter's validation and training volumes).
    /// Easy volumes still spend less and hard ones more; the mean is what is budgeted.
    #[arg(long, conflicts_with = "time_budget")]
    budget: Option<f64>,
    /// Mean fraction of the full network's measured time to spend, e.g. 0.7: for bundles compiled
    /// with `--cost` (a table from `autopath bench --calibrate` on the provider they run on).
    #[arg(long, conflicts_with = "threshold")]
    time_budget: Option<f64>,
    #[command(flatten)]
    provider: ProviderArgs,
    /// Tiles per network call.
    #[arg(long, default_value_t = 2)]
    tile_batch: usize,
    /// Sliding-window step as a fraction of the tile (default: 1 − the bundle's overlap).
    #[arg(long)]
    step: Option<f32>,
    /// Skip inputs whose output already exists.
    #[arg(long = "continue")]
    continue_: bool,
    /// Take the I-th of N deterministic slices of the sorted inputs (e.g. a Slurm array index).
    #[arg(long)]
    shard: Option<Shard>,
    /// Append one JSON line per volume (and a summary line) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Volumes in flight at once: while one is in the network the next is read and preprocessed and
    /// the previous one blended and written (default: what half the available memory holds, at most
    /// 3, or with the network on a GPU at most half the cores up to 8; 1 runs them one after
    /// another). Outputs are the same bytes either way.
    #[arg(long)]
    prefetch: Option<usize>,
    /// Refuse volumes with more voxels than this.
    #[arg(long, default_value_t = autopath::input::volume::DEFAULT_MAX_VOXELS)]
    max_voxels: u64,
    /// NaN or infinite voxels: refuse the volume (default), or replace them with zero or with the
    /// volume's smallest finite value (the NaN background resampling tools leave).
    #[arg(long, default_value = "refuse")]
    nan: autopath::input::volume::NonFinite,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Load ONNX Runtime, print where it came from, and exit.
    #[arg(long)]
    check_ort: bool,
    #[cfg(feature = "serve")]
    #[command(subcommand)]
    command: Option<Sub>,
}

#[cfg(feature = "serve")]
#[derive(clap::Subcommand)]
enum Sub {
    /// Serve segmentations over HTTP: POST /v1/segment, POST /v1/policy, GET /healthz, /readyz, /v1/bundle, /metrics.
    Serve {
        /// Bundle folder.
        #[arg(long)]
        bundle: PathBuf,
        /// Listen address (loopback by default; port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Network threads, each with its own session set.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Host threads: requests decoded, blended and encoded at once, while others are in the
        /// network (default: 2 per worker).
        #[arg(long)]
        host_threads: Option<usize>,
        /// Most tiles in one network call shared by concurrent requests on the same path (default:
        /// twice --tile-batch; --tile-batch or less: every call is one request's).
        #[arg(long)]
        share_tiles: Option<usize>,
        /// Milliseconds a network call with room waits for the tiles of other requests in progress.
        #[arg(long, default_value_t = 2)]
        share_wait_ms: u64,
        #[command(flatten)]
        trust: TrustArgs,
        /// Requests allowed to wait for a worker; beyond that the answer is 503 with Retry-After.
        #[arg(long, default_value_t = 8)]
        queue: usize,
        /// Largest accepted body in MB (413 above).
        #[arg(long, default_value_t = 512)]
        max_body_mb: usize,
        /// Per-request timeout in seconds (504 after).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// File holding a bearer token required on everything but /healthz and /readyz.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        provider: ProviderArgs,
        /// Tiles per network call.
        #[arg(long, default_value_t = 2)]
        tile_batch: usize,
    },
}

#[cfg(feature = "serve")]
fn serve(sub: Sub) -> anyhow::Result<bool> {
    let Sub::Serve {
        bundle,
        addr,
        workers,
        host_threads,
        share_tiles,
        share_wait_ms,
        trust,
        queue,
        max_body_mb,
        timeout,
        token_file,
        provider,
        tile_batch,
    } = sub;
    let token = match token_file {
        Some(f) => {
            Some(std::fs::read_to_string(&f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?.trim().to_string())
        }
        None => None,
    };
    let opts = autopath::deploy::serve::ServeOptions {
        bundle,
        addr,
        workers,
        host_threads: host_threads.unwrap_or(2 * workers.max(1)),
        share_tiles: share_tiles.unwrap_or(2 * tile_batch),
        share_wait: std::time::Duration::from_millis(share_wait_ms),
        audit: trust.audit()?,
        guard: trust.guard,
        queue,
        max_body: max_body_mb * 1024 * 1024,
        timeout: std::time::Duration::from_secs(timeout),
        token,
        session: provider.options(tile_batch),
        tile_batch,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(autopath::deploy::serve::serve(opts, |a| {
        println!("listening on http://{a}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }))?;
    eprintln!("stopped");
    Ok(true)
}

/// `--check-ort`: which ONNX Runtime library loaded, its build, the NVIDIA library folders and which
/// execution providers can run.
fn check_ort() -> anyhow::Result<()> {
    let (path, _) = autopath::deploy::ort_library::load(None)?;
    println!("ONNX Runtime loaded from {}", path.display());
    println!("{}", autopath::deploy::ort_library::build_info()?);
    let (cuda, cudnn) = autopath::deploy::gpu::wheel_library_dirs(path);
    let dir = |d: Option<std::path::PathBuf>| {
        d.map_or("not beside the library (system search)".into(), |d| d.display().to_string())
    };
    println!("CUDA libraries:  {}\ncuDNN libraries: {}", dir(cuda), dir(cudnn));
    println!("CUDA math: TF32 on unless --tf32 off; channels-last convolutions with --prefer-nhwc");
    println!("execution providers:");
    for p in autopath::deploy::gpu::provider_report()? {
        println!("  {:<9} {:<13} {}", p.name, if p.usable { "available" } else { "not available" }, p.detail);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    #[cfg(feature = "serve")]
    if let Some(sub) = cli.command {
        return serve(sub);
    }
    if cli.check_ort {
        check_ort()?;
        return Ok(true);
    }
    let (bundle, input, output) = (
        cli.bundle.clone().expect("required"),
        cli.input.clone().expect("required"),
        cli.output.clone().expect("required"),
    );
    // Every output path and the report are checked before the bundle loads: a run that cannot write
    // its results stops before it computes any.
    let audit = cli.trust.audit()?;
    let budget = autopath::deploy::Budget::from_options(cli.budget, cli.time_budget)?;
    let Plan { pairs, notes } = plan(&input, &output, cli.shard, cli.output_type)?;
    check_outputs(&pairs, cli.output_type)?;
    for note in &notes {
        eprintln!("note: {note}");
    }
    let mut report = cli.report.as_deref().map(open_report).transpose()?;
    let opts = PredictorOptions {
        session: cli.provider.options(cli.tile_batch),
        tile_batch: cli.tile_batch,
        step: cli.step,
        read: ReadOptions { max_voxels: cli.max_voxels, non_finite: cli.nan },
        audit,
        guard: cli.trust.guard,
        ..Default::default()
    };
    let predictor = Predictor::from_bundle(&bundle, &opts)?;
    if !cli.quiet {
        suggest_depth_taps(&predictor, &opts.session, &bundle);
    }
    let choice =
        PathChoice::resolve(cli.path.clone(), cli.threshold, budget, predictor.bundle().manifest.policy.as_ref())?;
    let classes = predictor.bundle().manifest.input.activation.channels();
    let prefetch = match cli.prefetch {
        Some(0) => anyhow::bail!("--prefetch 0: at least one volume must be in flight"),
        Some(k) => k,
        None => {
            let gpu = predictor.providers().iter().any(|&e| e != autopath::deploy::ExecutionProvider::Cpu);
            default_prefetch(&pairs, &opts.read, classes, gpu)
        }
    };
    let bar = progress(pairs.len() as u64, "segment", cli.quiet);
    let quiet = cli.quiet || bar.is_hidden();
    let opts = BatchOptions { skip_existing: cli.continue_, prefetch };
    let report: Option<&mut dyn Write> = report.as_mut().map(|f| f as &mut dyn Write);
    let s = run_batch(&predictor, &pairs, &choice, opts, report, &mut |event| show(&bar, quiet, event))?;
    bar.finish_and_clear();
    eprintln!(
        "{} segmented, {} failed, {} skipped ({:.1} s, {:.2} volumes/s, {} in flight)",
        s.segmented,
        s.failed,
        s.skipped,
        s.wall_seconds,
        s.segmented as f64 / s.wall_seconds.max(1e-9),
        s.prefetch
    );
    Ok(s.failed == 0)
}

/// `--report`: checked like an output path, then opened for appending.
fn open_report(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    check_output("--report", None, path)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("--report {}: {e}", path.display()))
}

/// One volume's outcome on the progress bar (and, without one, as a line on stderr).
fn show(bar: &indicatif::ProgressBar, quiet: bool, event: Event) {
    match event {
        Event::Done(r, seconds) => {
            let name = std::path::Path::new(&r.input).file_name().map(|n| n.to_string_lossy().into_owned());
            bar.set_message(name.unwrap_or_default());
            if quiet {
                eprintln!(
                    "{} -> {}: kept {} of {} blocks ({}), {:.0} % of full FLOPs, {seconds:.2} s",
                    r.input,
                    r.output,
                    r.blocks_kept,
                    r.keep.len(),
                    r.keep,
                    100.0 * r.flop_fraction
                );
            }
            bar.inc(1);
        }
        Event::Failed(_, e) => {
            bar.suspend(|| eprintln!("error: {e}"));
            bar.inc(1);
        }
        Event::Skipped(_) => bar.inc(1),
    }
}

fn main() -> ExitCode {
    autopath::deploy::heap::keep_freed_buffers();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => report(&e),
    }
}

/// Says once, on stderr, when a bundle with native 3D convolutions runs on the CPU provider: the bundle
/// is fine, but the CPU provider has a faster form of it.
fn suggest_depth_taps(predictor: &Predictor, opts: &autopath::deploy::SessionOptions, bundle: &std::path::Path) {
    if predictor.bundle().manifest.producer.conv3d == autopath_bundle::Conv3dLayout::Native
        && opts.ep == autopath::deploy::ExecutionProvider::Cpu
    {
        eprintln!(
            "note: {} writes its 3D convolutions natively; on the CPU provider a bundle compiled with \
             `autopath compile --conv3d depth-taps` runs them on ONNX Runtime's 2D kernels (full network \
             1.4x faster on the demo's tiles)",
            bundle.display()
        );
    }
}
