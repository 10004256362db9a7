//! Pieces shared by the two binaries: progress bars and error reporting.

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
    pub ep: crate::deploy::ExecutionProvider,
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
    /// TensorRT FP16 kernels (TensorRT only: CUDA runs the fp32 graphs).
    #[arg(long)]
    pub fp16: bool,
    /// cuDNN convolution algorithm choice under CUDA.
    #[arg(long, value_enum, default_value = "heuristic")]
    pub cudnn_search: crate::deploy::CudnnSearch,
    /// Keep block outputs in device memory between sessions (auto: on GPU providers).
    #[arg(long, value_enum, default_value = "auto")]
    pub io_binding: crate::deploy::IoBindingMode,
}

impl ProviderArgs {
    /// Session options for calls of up to `tile_batch` tiles.
    pub fn options(&self, tile_batch: usize) -> crate::deploy::SessionOptions {
        crate::deploy::SessionOptions {
            ep: self.ep,
            allow_fallback: self.allow_fallback,
            threads: self.threads,
            trt_cache: if self.no_trt_cache {
                None
            } else {
                self.trt_cache.clone().or_else(crate::deploy::session::default_trt_cache)
            },
            fp16: self.fp16,
            io_binding: self.io_binding,
            device_id: self.device_id,
            cudnn_search: self.cudnn_search,
            max_tile_batch: tile_batch.max(1),
        }
    }
}
