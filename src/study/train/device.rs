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
