//! Where Candle trains: `--device cpu|cuda|cuda:N`, or the first GPU when the build has CUDA and one
//! answers.
//!
//! Only compute moves: volumes are read, cropped and augmented on the host, one batch goes to the
//! device per step, and checkpoints are written from host copies, so a run trained on a GPU compiles,
//! evaluates and resumes on a CPU-only machine.

use candle_core::Device;

use crate::error::{Error, Result};

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The host.
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with CUDA support (`--features cuda`).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Opens the requested device. With no request: `cuda:0` when this build has CUDA and the device
/// opens, else the CPU. The returned text says which one and why, for the user.
pub fn open(choice: Option<DeviceChoice>) -> Result<(Device, String)> {
    match choice {
        Some(DeviceChoice::Cpu) => Ok((Device::Cpu, "cpu (requested)".into())),
        Some(DeviceChoice::Cuda(n)) => Ok((cuda(n)?, format!("cuda:{n} (requested)"))),
        None if CUDA_BUILD => match cuda(0) {
            Ok(d) => Ok((d, "cuda:0 (a GPU answered)".into())),
            Err(e) => Ok((Device::Cpu, format!("cpu (no usable GPU: {e})"))),
        },
        None => Ok((Device::Cpu, "cpu (this build has no CUDA support)".into())),
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !CUDA_BUILD {
        return Err(Error::invalid(
            "--device",
            format!("cuda:{ordinal}: this build has no CUDA support; build with `make check-cuda` (cargo --features cuda) or use --device cpu"),
        ));
    }
    // Candle reports a missing driver or GPU through a multi-line error; the first line names it.
    Device::new_cuda(ordinal).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        Error::invalid("--device", format!("cuda:{ordinal} cannot be opened: {first}"))
    })
}

/// Refuses a reduced training precision on the CPU, where the convolution kernels compute in f32
/// whatever it says (bf16 and TF32 are for CUDA's tensor cores).
pub fn check_precision(device: &Device, precision: autopath_models::ops::TrainPrecision) -> Result<()> {
    if device.is_cpu() && precision != autopath_models::ops::TrainPrecision::Fp32 {
        return Err(Error::invalid(
            "--precision",
            format!("{} is for CUDA (--device cuda); the CPU kernels compute in f32", precision.name()),
        ));
    }
    Ok(())
}

/// The training precision in force until this value is dropped, then fp32 again: the setting is
/// process-wide, and what runs after a segmenter's training in the same process (the demo's policy
/// training and evaluation) computes in f32.
pub struct PrecisionScope;

impl PrecisionScope {
    /// Sets `precision` ([`autopath_models::ops::set_precision`]) for the scope's lifetime.
    pub fn set(precision: autopath_models::ops::TrainPrecision) -> PrecisionScope {
        autopath_models::ops::set_precision(precision);
        PrecisionScope
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        autopath_models::ops::set_precision(autopath_models::ops::TrainPrecision::Fp32);
    }
}
