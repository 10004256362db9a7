//! Differentiable 3D operations that Candle 0.11 lacks.

pub mod batch_norm;
pub mod bce_dice;
pub mod conv3d;
pub mod generic;
pub mod params;
pub mod residual;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

pub use params::{Conv3dParams, MaxPool3dParams};

/// 3D convolution without bias, differentiable in both arguments: the CPU kernels ([`conv3d`]
/// module) on the CPU, the composed [`generic::conv3d_taps`] elsewhere (what CUDA runs).
pub fn conv3d(
    x: &candle_core::Tensor,
    w: &candle_core::Tensor,
    params: Conv3dParams,
) -> candle_core::Result<candle_core::Tensor> {
    if cpu_kernels(x) {
        conv3d::conv3d_kernel(x, w, params)
    } else if precision() == TrainPrecision::Bf16 {
        let (dtype, bf16) = (x.dtype(), candle_core::DType::BF16);
        let (xb, wb) = (x.to_dtype(bf16)?, w.to_dtype(bf16)?);
        if x.device().is_cpu() {
            // Candle's CPU matrix product has no bf16: the operands rounded to bf16 and multiplied in
            // f32 are what bf16 tensor cores compute (exact products, f32 sums), up to the sums' order.
            generic::conv3d_taps(&xb.to_dtype(dtype)?, &wb.to_dtype(dtype)?, params)
        } else {
            generic::conv3d_taps(&xb, &wb, params)?.to_dtype(dtype)
        }
    } else {
        generic::conv3d_taps(x, w, params)
    }
}

/// The number format of training's convolutions and matrix products on the composed path (what CUDA
/// runs); the CPU kernels compute in f32 whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainPrecision {
    /// f32 throughout.
    #[default]
    Fp32,
    /// f32 tensors, matrix products (and so convolutions, which Candle's CUDA backend runs as im2col +
    /// matrix product) on TF32 tensor cores: 10-bit mantissas in the products, f32 sums.
    Tf32,
    /// Convolutions on bf16 copies of their input and weight (bf16 tensor cores, f32 sums), their
    /// output back in f32: weights (the optimiser's master copy), BatchNorm and the loss stay f32.
    Bf16,
}

impl TrainPrecision {
    /// As the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            TrainPrecision::Fp32 => "fp32",
            TrainPrecision::Tf32 => "tf32",
            TrainPrecision::Bf16 => "bf16",
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the training precision for this whole process (TF32 is Candle's process-wide CUDA setting).
pub fn set_precision(p: TrainPrecision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
    candle_core::cuda::set_gemm_reduced_precision_f32(p == TrainPrecision::Tf32);
}

/// The training precision in force ([`set_precision`]).
pub fn precision() -> TrainPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => TrainPrecision::Tf32,
        2 => TrainPrecision::Bf16,
        _ => TrainPrecision::Fp32,
    }
}

/// The elements a contiguous layout covers, or an error naming the op and the operand: the CPU
/// kernels read their operands as plain slices.
pub(crate) fn contiguous<'a, T>(
    s: &'a [T],
    l: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((from, to)) => Ok(&s[from..to]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

static COMPOSED: AtomicBool = AtomicBool::new(false);

/// Makes CPU tensors take the composed, device-generic path (what CUDA runs) instead of the CPU
/// kernels, for this whole process. Why: a machine without a GPU can then train exactly the code a
/// GPU would run and compare it with the fast path (`autopath device-check`).
pub fn set_composed(on: bool) {
    COMPOSED.store(on, Ordering::Relaxed);
}

static AVX2_ONLY: AtomicBool = AtomicBool::new(false);

/// Keeps the CPU convolution kernels to their AVX2 tiles for this whole process, on a CPU that has
/// AVX-512 too. Why: training speed depends on the vector width and machines differ, and a ratio
/// against PyTorch is only a fact in one run; this measures the case of a CPU without AVX-512 on one
/// that has it (`autopath step-time --avx2-only`, `scripts/torch-step-compare --isa avx2`). The
/// numbers do not change: each kernel's AVX2 tiles give its AVX-512 tiles' bits (their tests).
/// `gemm`'s matrix products keep their AVX-512 code, which that crate chooses at build time.
pub fn set_avx2_only(on: bool) {
    AVX2_ONLY.store(on, Ordering::Relaxed);
}

/// Whether `AUTOPATH_CPU_ISA=avx2` is set: the whole process keeps to the AVX2 tiles, as
/// [`set_avx2_only`] does. `make test` runs the kernel tests once more so, so both instruction-set
/// paths are tested on a CPU with AVX-512.
fn avx2_only_from_env() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FROM_ENV.get_or_init(|| std::env::var("AUTOPATH_CPU_ISA").is_ok_and(|v| v.eq_ignore_ascii_case("avx2")))
}

/// Whether the CPU kernels may use AVX-512: the CPU has it, and neither [`set_avx2_only`] nor
/// `AUTOPATH_CPU_ISA=avx2` keeps them to AVX2.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    !AVX2_ONLY.load(Ordering::Relaxed) && !avx2_only_from_env() && std::is_x86_feature_detected!("avx512f")
}

/// For a test of CPU kernels: whether this CPU lacks one of `features` (`avx2`, `fma`, `avx512f`). If
/// it does, the test cannot run here, and says so on the terminal (past the test harness's capture,
/// which hides what passing tests print) with its name and what is missing, instead of passing
/// silently.
#[cfg(test)]
pub(crate) fn skip_without(test: &str, features: &[&str]) -> bool {
    use std::io::Write;
    let has = |f: &str| -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match f {
                "avx2" => std::is_x86_feature_detected!("avx2"),
                "fma" => std::is_x86_feature_detected!("fma"),
                "avx512f" => std::is_x86_feature_detected!("avx512f"),
                _ => false,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = f;
            false
        }
    };
    let missing: Vec<&str> = features.iter().copied().filter(|f| !has(f)).collect();
    if !missing.is_empty() {
        let line = format!("SKIPPED {test}: this CPU has no {}\n", missing.join(", "));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    !missing.is_empty()
}

/// Whether `t` goes through the CPU kernels: it is on the CPU and the composed path is not forced.
pub(crate) fn cpu_kernels(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && !COMPOSED.load(Ordering::Relaxed)
}

/// Runs `f` on one of rayon's worker threads when `device` takes the CPU kernels, else here.
///
/// Why: called from a thread outside the pool, every parallel loop of the kernels (a training step
/// has a few hundred) hands its work to the pool and sleeps until the pool wakes it; on a worker the
/// calling thread takes part in the loop and no thread waits to be woken. The r18 width-16 training
/// step took 115 ms instead of 123 (median of 12 alternating runs each).
pub fn on_worker<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() && !COMPOSED.load(Ordering::Relaxed) {
        rayon::scope(|_| f())
    } else {
        f()
    }
}
