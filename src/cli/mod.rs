//! Pieces shared by the two binaries: progress bars, error reporting, and the command-line spelling of
//! library settings (the library's types know nothing of clap).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A progress bar that draws only on a terminal and never with `--quiet`.
pub fn progress(len: u64, message: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// Prints an error with its causes on one line and returns the process exit code.
pub fn report(err: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("error: {err:#}");
    std::process::ExitCode::from(1)
}

/// Parses `D,H,W` (or `DxHxW`).
pub fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split([',', 'x']).map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!("expected D,H,W, got {s:?}"));
    }
    let mut out = [0; 3];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p.parse().map_err(|_| format!("{p:?} in {s:?} is not a whole number"))?;
        if *o == 0 {
            return Err(format!("{s:?} has a zero extent"));
        }
    }
    Ok(out)
}

/// How ONNX Runtime runs the graphs: the same flags on `autopath-run`, `serve` and `autopath bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProviderArgs {
    /// Execution provider.
    #[arg(long, value_enum, default_value = "cpu")]
    pub ep: EpArg,
    /// When the requested GPU provider cannot be used, take the next of TensorRT → CUDA → CPU (one
    /// warning names what failed) instead of stopping.
    #[arg(long)]
    pub allow_fallback: bool,
    /// GPU ordinal for CUDA and TensorRT.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// Threads of the shared ONNX Runtime pool (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// TensorRT engine and timing cache folder, a sub-folder per bundle
    /// [default: $XDG_CACHE_HOME/autopath/tensorrt or ~/.cache/autopath/tensorrt].
    #[arg(long)]
    pub trt_cache: Option<std::path::PathBuf>,
    /// Build TensorRT engines anew at every start (no cache).
    #[arg(long, conflicts_with = "trt_cache")]
    pub no_trt_cache: bool,
    /// fp16 inference: TensorRT builds fp16 engines; CUDA and the CPU run an fp16 bundle's graphs
    /// (`autopath compile --precision fp16`) and refuse this flag on an fp32 bundle.
    #[arg(long)]
    pub fp16: bool,
    /// cuDNN convolution algorithm choice under CUDA.
    #[arg(long, value_enum, default_value = "heuristic")]
    pub cudnn_search: CudnnSearchArg,
    /// Keep block outputs in device memory between sessions (auto: on GPU providers).
    #[arg(long, value_enum, default_value = "auto")]
    pub io_binding: IoBindingArg,
    /// TF32 tensor-core math for fp32 convolutions and matrix products under CUDA (ONNX Runtime's
    /// default is on; off gives full fp32 precision).
    #[arg(long, value_enum, default_value = "on")]
    pub tf32: OnOff,
    /// Let CUDA run convolutions in channels-last (NHWC) layout, which tensor cores prefer.
    #[arg(long)]
    pub prefer_nhwc: bool,
    /// CUDA graphs for the whole-network graphs (full.onnx and the whole-path graphs): captured once at
    /// a batch of --tile-batch tiles (short batches padded) in fixed device buffers, then replayed.
    #[arg(long)]
    pub cuda_graph: bool,
    /// Paths without a whole-path graph in the bundle that get one joined from its segment graphs on
    /// first use (one session each instead of one per block); later ones run as the chain. 0: none.
    #[arg(long, default_value_t = crate::deploy::session::DEFAULT_JOINED_PATHS)]
    pub joined_paths: usize,
    /// Write ONNX Runtime's per-node trace of every session into this folder (Chrome-trace JSON, one
    /// per graph; `scripts/ort-trace-summary` totals them by operator and provider).
    #[arg(long)]
    pub ort_trace: Option<std::path::PathBuf>,
}

impl ProviderArgs {
    /// Session options for calls of up to `tile_batch` tiles.
    pub fn options(&self, tile_batch: usize) -> crate::deploy::SessionOptions {
        crate::deploy::SessionOptions {
            ep: self.ep.into(),
            allow_fallback: self.allow_fallback,
            threads: self.threads,
            own_threads: None,
            trt_cache: if self.no_trt_cache {
                None
            } else {
                self.trt_cache.clone().or_else(crate::deploy::session::default_trt_cache)
            },
            fp16: self.fp16,
            io_binding: self.io_binding.into(),
            device_id: self.device_id,
            cudnn_search: self.cudnn_search.into(),
            max_tile_batch: tile_batch.max(1),
            trace: self.ort_trace.clone(),
            tf32: self.tf32 == OnOff::On,
            prefer_nhwc: self.prefer_nhwc,
            cuda_graph: self.cuda_graph,
            joined_paths: self.joined_paths,
        }
    }
}

/// When to doubt the policy's path: audits against the full network and the guard for unfamiliar
/// volumes. The same flags on `autopath-run` and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrustArgs {
    /// Audit a fraction of the volumes (chosen by a hash of their voxels: a re-run audits the same
    /// ones): the full network runs too, and the report gives the agreement of the path's labels with
    /// its labels and what it cost.
    #[arg(long, default_value_t = 0.0)]
    pub audit: f64,
    /// An audited volume whose agreement (foreground Dice against the full network) is below this gets
    /// the full network's labels, and its report (or the service's `x-autopath-answered` header) says so.
    #[arg(long, default_value_t = crate::deploy::audit::Audit::DEFAULT_MIN_AGREEMENT)]
    pub audit_min: f64,
    /// Send volumes whose policy input lies beyond the bundle's calibrated bound (intensity features
    /// unlike the training set's) to the full network instead of the policy's path.
    #[arg(long)]
    pub guard: bool,
}

impl TrustArgs {
    /// The audit settings, checked (None for `--audit 0`).
    pub fn audit(&self) -> crate::error::Result<Option<crate::deploy::audit::Audit>> {
        if self.audit == 0.0 {
            return Ok(None);
        }
        crate::deploy::audit::Audit::new(self.audit, self.audit_min).map(Some)
    }
}

/// A setting that is on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Declares a clap value enum mirroring a library enum variant for variant, with the conversion.
macro_rules! value_arg {
    ($(#[$doc:meta])* $name:ident => $target:ty { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl From<$name> for $target {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => <$target>::$variant),+
                }
            }
        }
    };
}

value_arg! {
    /// `--ep`.
    EpArg => crate::deploy::ExecutionProvider {
        /// ONNX Runtime's CPU kernels.
        Cpu,
        /// NVIDIA CUDA (needs the onnxruntime-gpu library and a GPU).
        Cuda,
        /// NVIDIA TensorRT (needs the onnxruntime-gpu library, TensorRT and a GPU).
        Tensorrt,
    }
}

value_arg! {
    /// `--cudnn-search`.
    CudnnSearchArg => crate::deploy::CudnnSearch {
        /// cuDNN's heuristics: no benchmarking at start-up, no extra workspace.
        Heuristic,
        /// Benchmark every algorithm on the first run of each shape.
        Exhaustive,
    }
}

value_arg! {
    /// `--io-binding`.
    IoBindingArg => crate::deploy::IoBindingMode {
        /// On for GPU providers that registered, off on CPU.
        Auto,
        /// Always (on CPU this binds to host memory).
        On,
        /// Never: every session returns its output to the host.
        Off,
    }
}

#[cfg(feature = "train")]
value_arg! {
    /// `--layout`.
    LayoutArg => crate::study::dataset::Layout {
        /// `volume-K.nii[.gz]` + `segmentation-K.nii[.gz]` in one folder.
        Lits,
        /// Decathlon Task03_Liver: `imagesTr/liver_K.nii.gz` + `labelsTr/liver_K.nii.gz`.
        Msd,
        /// nnU-Net raw: `imagesTr/CASE_0000.nii.gz` + `labelsTr/CASE.nii.gz`.
        Nnunet,
    }
}
