//! ONNX Runtime sessions for a bundle: one per graph, created once, with explicit execution providers.

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::replay::Replay;
use crate::error::{Error, Result};
use autopath_bundle::{names, Bundle};

/// Which hardware runs the graphs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU kernels.
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs the onnxruntime-gpu library and a GPU).
    Cuda,
    /// NVIDIA TensorRT (needs the onnxruntime-gpu library, TensorRT and a GPU).
    Tensorrt,
}

impl ExecutionProvider {
    /// The name the command line and the service use: `cpu`, `cuda`, `tensorrt`.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Tensorrt => "tensorrt",
        }
    }
}

/// How sessions are built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Execution provider.
    pub ep: ExecutionProvider,
    /// When the requested GPU provider cannot be used, take the next in TensorRT → CUDA → CPU (with
    /// one warning) instead of stopping.
    pub allow_fallback: bool,
    /// Threads of the shared intra-op pool (None: ONNX Runtime's default, one per core).
    pub threads: Option<usize>,
    /// Every session computes on a pool of its own with this many threads, the calling one included
    /// (spinning off), instead of the shared pool: for several session sets that work on different
    /// tiles at once. The blocks' small 3D tensors split poorly inside one graph (measured in
    /// `study::path_eval::PathEvaluator::with_workers`).
    pub own_threads: Option<usize>,
    /// TensorRT engine and timing caches (a sub-folder per bundle hash); None builds engines anew at
    /// every start.
    pub trt_cache: Option<PathBuf>,
    /// fp16 inference: TensorRT builds fp16 engines (from graphs of either precision); the other
    /// providers run a bundle's graphs as they are, so there it asks for an fp16 bundle (`compile
    /// --precision fp16`) and refuses an fp32 one.
    pub fp16: bool,
    /// Whether activations stay in the provider's memory between block sessions (IoBinding).
    pub io_binding: IoBindingMode,
    /// GPU ordinal for CUDA and TensorRT.
    pub device_id: i32,
    /// How cuDNN picks convolution algorithms under CUDA.
    pub cudnn_search: CudnnSearch,
    /// Largest number of tiles per call: the batch of TensorRT's optimisation profiles, so one
    /// engine per graph serves every chunk, the smaller last one included.
    pub max_tile_batch: usize,
    /// Folder for ONNX Runtime's per-node traces (one Chrome-trace JSON per session, named after its
    /// graph): which provider ran each node and for how long, the first thing to read when a GPU run
    /// is slower than its FLOPs say.
    pub trace: Option<PathBuf>,
    /// TF32 tensor-core math under CUDA (ONNX Runtime's default: on).
    pub tf32: bool,
    /// Channels-last convolutions under CUDA.
    pub prefer_nhwc: bool,
    /// CUDA graphs for the whole-network sessions (`full.onnx`, whole-path graphs): their batch fixed
    /// to `max_tile_batch`, their input and output in fixed device buffers
    /// ([`crate::deploy::replay::Replay`]), captured once and replayed. The chain's sessions run as
    /// before. CUDA and TensorRT only.
    pub cuda_graph: bool,
    /// Paths without a whole-path graph in the bundle that get one joined from its segment graphs on
    /// first use (each a session of its own, with its own copy of the weights); further paths run as
    /// the chain of block sessions. 0: every such path runs as the chain.
    pub joined_paths: usize,
}

/// Paths joined into one graph by default: the policy takes a few distinct paths (the demo's 2–5).
pub const DEFAULT_JOINED_PATHS: usize = 8;

/// cuDNN's convolution algorithm choice under the CUDA provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum CudnnSearch {
    /// cuDNN's heuristics: no benchmarking at start-up, no extra workspace (the default: about 20
    /// sessions each benchmarking with maximum workspace run small GPUs out of memory).
    #[default]
    Heuristic,
    /// Benchmark every algorithm on the first run of each shape: slower start, sometimes faster runs.
    Exhaustive,
}

/// When block outputs are bound to device memory instead of coming back to the host after every
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
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
    /// Outputs bound to the memory of this CUDA device: no host round trip between blocks.
    Cuda(i32),
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ep: ExecutionProvider::Cpu,
            allow_fallback: false,
            threads: None,
            own_threads: None,
            trt_cache: None,
            fp16: false,
            io_binding: IoBindingMode::Auto,
            device_id: 0,
            cudnn_search: CudnnSearch::Heuristic,
            max_tile_batch: 2,
            trace: None,
            tf32: true,
            prefer_nhwc: false,
            cuda_graph: false,
            joined_paths: DEFAULT_JOINED_PATHS,
        }
    }
}

/// The default TensorRT cache: `$XDG_CACHE_HOME/autopath/tensorrt` or `~/.cache/autopath/tensorrt`.
pub fn default_trt_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("autopath").join("tensorrt"))
}

fn ort_err(what: impl std::fmt::Display, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::ort(what, e)
}

/// A graph's input as TensorRT's optimisation profile needs it: its name and the shape of one sample.
#[derive(Debug, Clone)]
pub struct GraphInput {
    /// Input name in the graph.
    pub name: String,
    /// Shape without the batch axis.
    pub sample: Vec<usize>,
}

/// TensorRT profile shapes (min, opt, max) for batches of 1 to `max_batch` samples of each of a
/// graph's `inputs`: `name:1x…,other:1x…`, then the same with `B`, twice. Every input of a graph must
/// be in its profile (the skip decoder's head has two).
pub fn trt_profile(inputs: &[GraphInput], max_batch: usize) -> (String, String, String) {
    let b = max_batch.max(1);
    let shapes = |batch: usize| {
        inputs
            .iter()
            .map(|input| {
                let dims: Vec<String> =
                    std::iter::once(batch).chain(input.sample.iter().copied()).map(|d| d.to_string()).collect();
                format!("{}:{}", input.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    (shapes(1), shapes(b), shapes(b))
}

fn cuda_provider(opts: &SessionOptions) -> ExecutionProviderDispatch {
    use ort::ep::{cuda::ConvAlgorithmSearch, ArenaExtendStrategy};
    let search = match opts.cudnn_search {
        CudnnSearch::Heuristic => ConvAlgorithmSearch::Heuristic,
        CudnnSearch::Exhaustive => ConvAlgorithmSearch::Exhaustive,
    };
    ort::ep::CUDA::default()
        .with_device_id(opts.device_id)
        .with_conv_algorithm_search(search)
        .with_conv_max_workspace(opts.cudnn_search == CudnnSearch::Exhaustive)
        // Grow the arena by what is asked, not to the next power of two: ~20 sessions share the GPU.
        .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested)
        .with_tf32(opts.tf32)
        .with_prefer_nhwc(opts.prefer_nhwc)
        .with_cuda_graph(opts.cuda_graph)
        .build()
        .error_on_failure()
}

fn providers(
    ep: ExecutionProvider,
    opts: &SessionOptions,
    bundle_hash: &str,
    inputs: &[GraphInput],
) -> Result<Vec<ExecutionProviderDispatch>> {
    Ok(match ep {
        ExecutionProvider::Cpu => vec![],
        ExecutionProvider::Cuda => vec![cuda_provider(opts)],
        ExecutionProvider::Tensorrt => {
            let mut trt = ort::ep::TensorRT::default()
                .with_device_id(opts.device_id)
                .with_fp16(opts.fp16)
                .with_cuda_graph(opts.cuda_graph);
            if let Some(dir) = &opts.trt_cache {
                let d = dir.join(&bundle_hash[..16.min(bundle_hash.len())]);
                std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                let d = d.display().to_string();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&d);
            }
            if !inputs.is_empty() {
                let (min, opt, max) = trt_profile(inputs, opts.max_tile_batch);
                trt = trt.with_profile_min_shapes(min).with_profile_opt_shapes(opt).with_profile_max_shapes(max);
            }
            // CUDA behind TensorRT for the nodes TensorRT does not take.
            vec![trt.build().error_on_failure(), cuda_provider(opts)]
        }
    })
}

/// The providers to try, in order: the requested one, then (with fallback) TensorRT → CUDA → CPU.
fn attempts(opts: &SessionOptions) -> Vec<ExecutionProvider> {
    use ExecutionProvider::*;
    match (opts.ep, opts.allow_fallback) {
        (Tensorrt, true) => vec![Tensorrt, Cuda, Cpu],
        (Cuda, true) => vec![Cuda, Cpu],
        (ep, _) => vec![ep],
    }
}

/// Prints each distinct warning once per process: every graph of a bundle meets the same failure.
fn warn_once(message: String) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&message) {
        eprintln!("{message}");
        seen.push(message);
    }
}

/// Creates a session for one graph file with the requested provider; a provider that fails to
/// register is an error naming the file and the provider, unless fallback was allowed, in which case
/// the next of TensorRT → CUDA → CPU is tried with one warning. Returns the session and the provider
/// it actually runs on. `inputs` give TensorRT its optimisation profile.
pub fn open(
    path: &Path,
    opts: &SessionOptions,
    bundle_hash: &str,
    inputs: &[GraphInput],
) -> Result<(Session, ExecutionProvider)> {
    open_graph((path, None), opts, bundle_hash, inputs)
}

/// [`open`] for a graph named `path`, read from that file or, when given, from `bytes` in memory.
fn open_graph(
    (path, bytes): (&Path, Option<&[u8]>),
    opts: &SessionOptions,
    bundle_hash: &str,
    inputs: &[GraphInput],
) -> Result<(Session, ExecutionProvider)> {
    let (library, env) = crate::deploy::ort_library::load(opts.threads)?;
    let build = |ep: ExecutionProvider| -> std::result::Result<Session, String> {
        if ep != ExecutionProvider::Cpu {
            super::gpu::prepare(library).map_err(|e| e.to_string())?;
        }
        let eps = providers(ep, opts, bundle_hash, inputs).map_err(|e| e.to_string())?;
        let b = Session::builder(env).map_err(|e| e.to_string())?;
        let b = b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| e.to_string())?;
        let b = match opts.own_threads {
            Some(n) => {
                let b = b.with_independent_thread_pool().map_err(|e| e.to_string())?;
                let b = b.with_intra_threads(n.max(1)).map_err(|e| e.to_string())?;
                let b = b.with_intra_op_spinning(false).map_err(|e| e.to_string())?;
                b.with_inter_threads(1).map_err(|e| e.to_string())?
            }
            None => b,
        };
        let b = if eps.is_empty() { b } else { b.with_execution_providers(eps).map_err(|e| e.to_string())? };
        // A CUDA graph replays fixed shapes: the batch is fixed too, so every shape computation folds.
        let b = match opts.cuda_graph && ep != ExecutionProvider::Cpu {
            true => b.with_dimension_override(names::BATCH, opts.max_tile_batch as i64).map_err(|e| e.to_string())?,
            false => b,
        };
        let mut b = match &opts.trace {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("--ort-trace {}: {e}", dir.display()))?;
                let stem = path.file_stem().unwrap_or_default();
                b.with_profiling(dir.join(stem)).map_err(|e| e.to_string())?
            }
            None => b,
        };
        match bytes {
            Some(bytes) => b.commit_from_memory(bytes).map_err(|e| e.to_string()),
            None => b.commit_from_file(path).map_err(|e| e.to_string()),
        }
    };
    let tries = attempts(opts);
    let mut failures: Vec<String> = Vec::new();
    for (i, &ep) in tries.iter().enumerate() {
        match build(ep) {
            Ok(s) => {
                if i > 0 {
                    warn_once(format!(
                        "warning: {}; running on {ep:?} as --allow-fallback permits",
                        failures.join("; ")
                    ));
                }
                return Ok((s, ep));
            }
            Err(e) => failures.push(format!("{ep:?} unavailable ({})", e.lines().next().unwrap_or_default())),
        }
    }
    let last = failures.join("; ");
    if opts.ep == ExecutionProvider::Cpu {
        return Err(ort_err(path.display(), last));
    }
    Err(ort_err(
        path.display(),
        format!("{last}. Install the GPU library (make setup-gpu; see `autopath-run --check-ort`) and an NVIDIA driver, or pass --allow-fallback"),
    ))
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
    /// The whole network, opened on first use (most runs never need it; on a GPU it is the largest
    /// graph and its own arena).
    full: Option<WholeGraph>,
    full_graph: (PathBuf, GraphInput, String),
    /// The bundle's whole-path graphs by keep mask, each opened on its first use.
    paths: Vec<(Vec<bool>, PathBuf, Option<WholeGraph>)>,
    /// Paths without a graph in the bundle, joined from its segment graphs on first use
    /// ([`super::joined`]).
    joined: Vec<(Vec<bool>, WholeGraph)>,
    /// The bundle, for joining.
    bundle: Bundle,
    /// The policy, if the bundle has one.
    pub policy: Option<Session>,
    /// The skip decoder's low-level input (None: the head takes the backbone's output only).
    pub low_level: Option<autopath_bundle::LowLevel>,
    /// The head in two graphs, where the bundle has them and [`Sessions::open_split_head`] opened
    /// them: for scoring many paths per volume.
    pub split_head: Option<SplitSessions>,
    /// Where the block chain keeps its intermediate values.
    pub residency: Residency,
    /// The provider the sessions run on (after any fallback) and the options they were built with.
    pub options: SessionOptions,
}

/// A graph of the whole network (`full.onnx` or a whole-path graph): `image` → `probabilities` in
/// one session, through fixed buffers where the run binds them ([`Replay`]: under `--cuda-graph`, and
/// on the CPU with `--io-binding on`).
pub struct WholeGraph {
    /// The session.
    pub session: Session,
    /// Its bound buffers, if it runs through them.
    pub replay: Option<Replay>,
}

impl WholeGraph {
    fn open(
        (path, bytes): (&Path, Option<&[u8]>),
        opts: &SessionOptions,
        (hash, input): (&str, &GraphInput),
        residency: Residency,
    ) -> Result<Self> {
        let session = open_graph((path, bytes), opts, hash, std::slice::from_ref(input))?.0;
        let names = (names::IMAGE, names::PROBABILITIES);
        let what = path.display().to_string();
        let replay = match residency {
            Residency::Cuda(id) if opts.cuda_graph => {
                Some(Replay::new(&session, &what, names, opts.max_tile_batch, Some(id))?)
            }
            Residency::BoundHost => Some(Replay::new(&session, &what, names, opts.max_tile_batch, None)?),
            _ => None,
        };
        Ok(WholeGraph { session, replay })
    }
}

/// The head's two graphs when split at the skip decoder's low-level part.
pub struct SplitSessions {
    /// Low-level features → the skip part.
    pub low: Session,
    /// The head's `x` and the skip part → probabilities.
    pub rest: Session,
    /// Name of the skip part.
    pub output: String,
}

/// `--fp16` where it can hold: always under TensorRT, elsewhere only on an fp16 bundle.
fn check_fp16(opts: &SessionOptions, bundle: &Bundle) -> Result<()> {
    let precision = bundle.manifest.producer.precision;
    if opts.fp16 && opts.ep != ExecutionProvider::Tensorrt && precision != autopath_bundle::Precision::Fp16 {
        return Err(Error::invalid(
            "--fp16",
            format!(
                "the {} provider runs a bundle's graphs as they are, and {} holds {} graphs: compile one with \
                 `autopath compile --precision fp16`, or use --ep tensorrt",
                opts.ep.name(),
                bundle.dir.display(),
                precision.name()
            ),
        ));
    }
    Ok(())
}

/// `--cuda-graph` only where a CUDA graph can be captured.
fn check_cuda_graph(opts: &SessionOptions) -> Result<()> {
    if opts.cuda_graph && opts.ep == ExecutionProvider::Cpu {
        return Err(Error::invalid("--cuda-graph", "CUDA graphs need --ep cuda or --ep tensorrt"));
    }
    Ok(())
}

/// The per-sample inputs of every graph of a bundle, for TensorRT's profiles: stem, blocks, head (two
/// with the skip decoder), full.
fn inputs(bundle: &Bundle) -> (GraphInput, Vec<GraphInput>, Vec<GraphInput>, GraphInput) {
    let a = &bundle.manifest.architecture;
    let image = GraphInput {
        name: names::IMAGE.into(),
        sample: [1].into_iter().chain(bundle.manifest.input.window.patch).collect(),
    };
    let blocks = a.blocks.iter().map(|b| GraphInput { name: names::X.into(), sample: b.input.to_vec() }).collect();
    let head_in = a.blocks.last().map_or(a.stem_output, |b| b.output);
    let mut head = vec![GraphInput { name: names::X.into(), sample: head_in.to_vec() }];
    head.extend(a.low_level.as_ref().map(|l| GraphInput { name: l.input.clone(), sample: l.shape.to_vec() }));
    (image.clone(), blocks, head, image)
}

impl Sessions {
    /// Opens all graphs of a verified bundle (`full.onnx` waits for its first use). The provider is
    /// settled on the stem: after a fallback every other graph opens on the provider that worked.
    pub fn open(bundle: &Bundle, opts: &SessionOptions) -> Result<Sessions> {
        check_fp16(opts, bundle)?;
        check_cuda_graph(opts)?;
        let a = &bundle.manifest.architecture;
        let h = &bundle.hash;
        let (image, block_inputs, head_inputs, full_input) = inputs(bundle);
        // The chain's sessions take inputs of any batch and never replay a CUDA graph.
        let chain = SessionOptions { cuda_graph: false, ..opts.clone() };
        let (stem, used) = open(&bundle.path(&a.stem_file), &chain, h, std::slice::from_ref(&image))?;
        let settled = SessionOptions { ep: used, allow_fallback: false, ..chain };
        let o = |f: &str, inputs: &[GraphInput]| open(&bundle.path(f), &settled, h, inputs).map(|(s, _)| s);
        let blocks = a
            .blocks
            .iter()
            .zip(&block_inputs)
            .map(|(b, i)| o(&b.file, std::slice::from_ref(i)))
            .collect::<Result<_>>()?;
        let shortcuts = a
            .blocks
            .iter()
            .zip(&block_inputs)
            .map(|(b, i)| b.shortcut_file.as_deref().map(|f| o(f, std::slice::from_ref(i))).transpose())
            .collect::<Result<_>>()?;
        let head = o(&a.head_file, &head_inputs)?;
        let policy = match &bundle.manifest.policy {
            Some(p) => {
                let input = GraphInput { name: names::VOLUME.into(), sample: [1].into_iter().chain(p.input).collect() };
                Some(o(&p.file, &[input])?)
            }
            None => None,
        };
        let residency = match (opts.io_binding, used != ExecutionProvider::Cpu) {
            (IoBindingMode::Off, _) => Residency::Host,
            (_, true) => Residency::Cuda(opts.device_id),
            (IoBindingMode::On, false) => Residency::BoundHost,
            (IoBindingMode::Auto, false) => Residency::Host,
        };
        Ok(Sessions {
            stem,
            blocks,
            shortcuts,
            head,
            full: None,
            full_graph: (bundle.path(&a.full_file), full_input, h.clone()),
            paths: bundle
                .manifest
                .policy
                .iter()
                .flat_map(|p| &p.path_graphs)
                .map(|g| (g.keep(), bundle.path(&g.file), None))
                .collect(),
            policy,
            joined: Vec::new(),
            bundle: bundle.clone(),
            low_level: a.low_level.clone(),
            split_head: None,
            residency,
            options: SessionOptions { cuda_graph: opts.cuda_graph && used != ExecutionProvider::Cpu, ..settled },
        })
    }

    /// Opens the split head's two graphs ([`autopath_bundle::SplitHead`]) if the bundle has
    /// them; returns whether it does. Not part of [`Sessions::open`]: one path per volume, as the
    /// runtime runs, has no use for them.
    pub fn open_split_head(&mut self, bundle: &Bundle) -> Result<bool> {
        let a = &bundle.manifest.architecture;
        let Some((low, split)) = a.low_level.as_ref().and_then(|l| l.split.as_ref().map(|s| (l, s))) else {
            return Ok(false);
        };
        let (_, _, head_inputs, _) = inputs(bundle);
        let skip = GraphInput { name: split.output.clone(), sample: split.shape.to_vec() };
        let low_input = GraphInput { name: low.input.clone(), sample: low.shape.to_vec() };
        let o = |f: &str, inputs: &[GraphInput]| open(&bundle.path(f), &self.options, &bundle.hash, inputs);
        let low_session = o(&split.low_file, std::slice::from_ref(&low_input))?.0;
        let rest = o(&split.rest_file, &[head_inputs[0].clone(), skip])?.0;
        self.split_head = Some(SplitSessions { low: low_session, rest, output: split.output.clone() });
        Ok(true)
    }

    /// The keep masks the bundle has whole-path graphs for.
    pub fn path_masks(&self) -> Vec<Vec<bool>> {
        self.paths.iter().map(|(k, _, _)| k.clone()).collect()
    }

    /// The whole-path graph's session for `keep`, opened now if this is its first use; None when the
    /// bundle has no graph for that path.
    pub fn path_session(&mut self, keep: &[bool]) -> Result<Option<&mut WholeGraph>> {
        let Some(i) = self.paths.iter().position(|(k, _, _)| k.as_slice() == keep) else { return Ok(None) };
        if self.paths[i].2.is_none() {
            let (_, input, hash) = &self.full_graph;
            let graph = WholeGraph::open((&self.paths[i].1, None), &self.options, (hash, input), self.residency)?;
            self.paths[i].2 = Some(graph);
        }
        Ok(self.paths[i].2.as_mut())
    }

    /// The session of path `keep` joined from the bundle's segment graphs, made now if this is its
    /// first use; None with `joined_paths` 0. (How many paths are joined is the caller's choice:
    /// [`crate::deploy::Predictor`] sends later paths down the chain.)
    pub fn joined_session(&mut self, keep: &[bool]) -> Result<Option<&mut WholeGraph>> {
        if let Some(i) = self.joined.iter().position(|(k, _)| k.as_slice() == keep) {
            return Ok(Some(&mut self.joined[i].1));
        }
        if self.options.joined_paths == 0 {
            return Ok(None);
        }
        let bytes = super::joined::path_graph(&self.bundle, keep)?;
        let name = self.bundle.dir.join(format!("joined_{}", names::path_file(&crate::labels::mask_text(keep))));
        let (_, input, hash) = &self.full_graph;
        let graph = WholeGraph::open((&name, Some(&bytes)), &self.options, (hash, input), self.residency)?;
        self.joined.push((keep.to_vec(), graph));
        Ok(self.joined.last_mut().map(|(_, g)| g))
    }

    /// The whole-network session, opened now if this is its first use.
    pub fn full(&mut self) -> Result<&mut WholeGraph> {
        if self.full.is_none() {
            let (path, input, hash) = &self.full_graph;
            self.full = Some(WholeGraph::open((path, None), &self.options, (hash, input), self.residency)?);
        }
        self.full.as_mut().ok_or_else(|| Error::OnnxRuntime("full.onnx did not open".into()))
    }
}
