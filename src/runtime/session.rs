//! ONNX Runtime sessions for a bundle: one per graph, created once, with explicit execution providers.

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::bundle::Bundle;
use crate::error::{Error, Result};

/// Which hardware runs the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU kernels.
    Cpu,
    /// NVIDIA CUDA (needs the onnxruntime-gpu library and a GPU).
    Cuda,
    /// NVIDIA TensorRT (needs the onnxruntime-gpu library, TensorRT and a GPU).
    Tensorrt,
}

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Execution provider.
    pub ep: ExecutionProvider,
    /// Accept CPU when the requested GPU provider cannot be registered.
    pub allow_fallback: bool,
    /// Threads of the shared intra-op pool (None: ONNX Runtime's default, one per core).
    pub threads: Option<usize>,
    /// TensorRT engine and timing caches (a sub-folder per bundle hash).
    pub trt_cache: Option<PathBuf>,
    /// TensorRT FP16 kernels.
    pub fp16: bool,
    /// Whether activations stay in the provider's memory between block sessions (IoBinding).
    pub io_binding: IoBindingMode,
}

/// When block outputs are bound to device memory instead of coming back to the host after every
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum IoBindingMode {
    /// On for GPU providers that registered, off on CPU (where outputs already live in host memory).
    #[default]
    Auto,
    /// Always (on CPU this binds to host memory: the same code path, useful to test it).
    On,
    /// Never: every session returns its output to the host.
    Off,
}

/// Where the chain's intermediate values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Plain runs: ONNX Runtime returns outputs in host memory.
    Host,
    /// Outputs bound to CPU memory through IoBinding (the binding path, on the host).
    BoundHost,
    /// Outputs bound to the memory of CUDA device 0: no host round trip between blocks.
    Cuda,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ep: ExecutionProvider::Cpu,
            allow_fallback: false,
            threads: None,
            trt_cache: None,
            fp16: false,
            io_binding: IoBindingMode::Auto,
        }
    }
}

fn ort_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::OnnxRuntime(format!("{what}: {e}"))
}

fn providers(opts: &SessionOptions, bundle_hash: &str) -> Result<Vec<ExecutionProviderDispatch>> {
    Ok(match opts.ep {
        ExecutionProvider::Cpu => vec![],
        ExecutionProvider::Cuda => vec![ort::ep::CUDA::default().build().error_on_failure()],
        ExecutionProvider::Tensorrt => {
            let mut trt = ort::ep::TensorRT::default().with_fp16(opts.fp16);
            if let Some(dir) = &opts.trt_cache {
                let d = dir.join(&bundle_hash[..16]);
                std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                let d = d.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&d);
            }
            // CUDA behind TensorRT for the nodes TensorRT does not take.
            vec![trt.build().error_on_failure(), ort::ep::CUDA::default().build().error_on_failure()]
        }
    })
}

/// Creates a session for one graph file with the requested provider; a provider that fails to
/// register is an error naming the file and the provider, unless fallback to CPU was allowed.
/// Returns the session and the provider it actually runs on.
pub fn open(path: &Path, opts: &SessionOptions, bundle_hash: &str) -> Result<(Session, ExecutionProvider)> {
    let (_, env) = crate::onnxruntime::load(opts.threads)?;
    let build = |eps: Vec<ExecutionProviderDispatch>| -> std::result::Result<Session, String> {
        let b = Session::builder(env).map_err(|e| e.to_string())?;
        let b = b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| e.to_string())?;
        let b = if eps.is_empty() { b } else { b.with_execution_providers(eps).map_err(|e| e.to_string())? };
        let mut b = b;
        b.commit_from_file(path).map_err(|e| e.to_string())
    };
    match build(providers(opts, bundle_hash)?) {
        Ok(s) => Ok((s, opts.ep)),
        Err(e) if opts.ep != ExecutionProvider::Cpu && opts.allow_fallback => {
            eprintln!("warning: {:?} provider unavailable for {} ({e}); running on CPU as --allow-fallback permits", opts.ep, path.display());
            Ok((build(vec![]).map_err(|e| ort_err(path.display(), e))?, ExecutionProvider::Cpu))
        }
        Err(e) if opts.ep != ExecutionProvider::Cpu => Err(ort_err(
            path.display(),
            format!("the {:?} execution provider could not be used: {e}. Install the onnxruntime-gpu library (ORT_DYLIB_PATH) and GPU drivers, or pass --allow-fallback to run on CPU", opts.ep),
        )),
        Err(e) => Err(ort_err(path.display(), e)),
    }
}

/// Every session a bundle needs.
pub struct Sessions {
    /// Stem.
    pub stem: Session,
    /// Kept-block graphs.
    pub blocks: Vec<Session>,
    /// Projection shortcuts (dropped blocks), by block.
    pub shortcuts: Vec<Option<Session>>,
    /// Head.
    pub head: Session,
    /// The whole network.
    pub full: Session,
    /// The policy, if the bundle has one.
    pub policy: Option<Session>,
    /// Where the block chain keeps its intermediate values.
    pub residency: Residency,
}

impl Sessions {
    /// Opens all graphs of a verified bundle.
    pub fn open(bundle: &Bundle, opts: &SessionOptions) -> Result<Sessions> {
        let a = &bundle.manifest.architecture;
        let h = &bundle.hash;
        // Every chain session must run on the same provider for their values to be bound to one
        // device; after a partial fallback the chain stays on the host.
        let on_gpu = std::cell::Cell::new(opts.ep != ExecutionProvider::Cpu);
        let o = |f: &str| -> Result<Session> {
            let (s, used) = open(&bundle.path(f), opts, h)?;
            if used == ExecutionProvider::Cpu {
                on_gpu.set(false);
            }
            Ok(s)
        };
        let stem = o(&a.stem_file)?;
        let blocks = a.blocks.iter().map(|b| o(&b.file)).collect::<Result<_>>()?;
        let shortcuts =
            a.blocks.iter().map(|b| b.shortcut_file.as_deref().map(o).transpose()).collect::<Result<_>>()?;
        let head = o(&a.head_file)?;
        let residency = match (opts.io_binding, on_gpu.get()) {
            (IoBindingMode::Off, _) => Residency::Host,
            (_, true) => Residency::Cuda,
            (IoBindingMode::On, false) => Residency::BoundHost,
            (IoBindingMode::Auto, false) => Residency::Host,
        };
        Ok(Sessions {
            stem,
            blocks,
            shortcuts,
            head,
            full: o(&a.full_file)?,
            policy: bundle.manifest.policy.as_ref().map(|p| o(&p.file)).transpose()?,
            residency,
        })
    }
}
