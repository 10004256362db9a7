//! Getting a GPU execution provider to load: the NVIDIA libraries it needs, found and loaded before
//! ONNX Runtime asks for them, and a report of what is available and why not.
//!
//! Why: `libonnxruntime_providers_cuda.so` from the `onnxruntime-gpu` wheel needs cuBLAS, cuBLASLt,
//! cuRAND, cuFFT, NVRTC, the CUDA runtime and cuDNN 9, and has no RUNPATH. The wheel's extras install
//! them beside it (`nvidia/cu13/lib`, `nvidia/cudnn/lib`), but a program that loads
//! `libonnxruntime.so` itself gets none of Python's path set-up, so the provider would fail with
//! "cannot open shared object file". Loading them first, by full path, makes them resolvable without
//! `LD_LIBRARY_PATH`. On a machine with a system CUDA instead, the folders are absent and the loader's
//! own search applies.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The CUDA driver library: installed with the NVIDIA driver, never by a package.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Folders holding the CUDA and cuDNN libraries of an `onnxruntime-gpu[cuda,cudnn]` installation, found
/// from the ONNX Runtime library's own path (`ROOT/onnxruntime/capi/libonnxruntime.so.*` → `ROOT/nvidia/...`).
pub fn wheel_library_dirs(ort_library: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let root = ort_library.ancestors().nth(3);
    let dir = |sub: &str| root.map(|r| r.join(sub)).filter(|d| d.is_dir());
    (dir("nvidia/cu13/lib"), dir("nvidia/cudnn/lib"))
}

fn load(path: &Path) -> std::result::Result<(), String> {
    ort::util::preload_dylib(path).map_err(|e| e.to_string())
}

/// Loads the driver and, when the wheel's folders exist, every CUDA and cuDNN library the CUDA
/// provider needs; once per process. The error names the first library that did not load.
pub fn prepare(ort_library: &Path) -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        load(Path::new(DRIVER_LIBRARY)).map_err(|e| {
            format!("the NVIDIA driver library {DRIVER_LIBRARY} cannot be loaded ({e}); is an NVIDIA driver (R580 or newer) installed?")
        })?;
        let (cuda, cudnn) = wheel_library_dirs(ort_library);
        for (dir, names) in [(cuda, ort::ep::cuda::CUDA_DYLIBS), (cudnn, ort::ep::cuda::CUDNN_DYLIBS)] {
            let Some(dir) = dir else { continue };
            for name in names {
                let path = dir.join(name);
                load(&path).map_err(|e| format!("{name} from {} cannot be loaded: {e}", dir.display()))?;
            }
        }
        Ok(())
    })
    .clone()
    .map_err(Error::OnnxRuntime)
}

/// One execution provider as `--check-ort` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderStatus {
    /// `cpu`, `cuda` or `tensorrt`.
    pub name: &'static str,
    /// Whether a session can use it here.
    pub usable: bool,
    /// Why not, naming the missing piece; or what it runs on.
    pub detail: String,
}

/// Tries each provider on an empty session builder: compiled into the library, its libraries load,
/// and it registers.
pub fn provider_report() -> Result<Vec<ProviderStatus>> {
    use ort::ep::ExecutionProvider as _;
    let (path, env) = crate::deploy::ort_library::load(None)?;
    let mut out = vec![ProviderStatus { name: "cpu", usable: true, detail: "always available".into() }];
    let gpu: [(&'static str, bool, ort::ep::ExecutionProviderDispatch); 2] = [
        ("cuda", ort::ep::CUDA::is_available().unwrap_or(false), ort::ep::CUDA::default().build().error_on_failure()),
        (
            "tensorrt",
            ort::ep::TensorRT::is_available().unwrap_or(false),
            ort::ep::TensorRT::default().build().error_on_failure(),
        ),
    ];
    for (name, compiled, ep) in gpu {
        let status = if !compiled {
            Err(format!("not in this ONNX Runtime build ({}); install the GPU library: make setup-gpu", path.display()))
        } else {
            prepare(path).map_err(|e| e.to_string()).and_then(|()| {
                let mut b = ort::session::Session::builder(env).map_err(|e| e.to_string())?;
                ep.register(&mut b).map_err(|e| first_line(&e.to_string()))
            })
        };
        out.push(match status {
            Ok(()) => ProviderStatus { name, usable: true, detail: "its libraries load and it registers".into() },
            Err(detail) => ProviderStatus { name, usable: false, detail },
        });
    }
    Ok(out)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}
