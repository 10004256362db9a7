//! `autopath compile`: trained models → a verified bundle folder, written under a temporary name and
//! renamed into place only after every parity check passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autopath_bundle::Conv3dLayout;
use autopath_models::deeplab::DeepLab3d;
use autopath_models::policy::PolicyNet;
use serde::Serialize;

use crate::deploy::{SessionOptions, Sessions};
use crate::error::{Error, Result};
use crate::study::train::segment::TrainConfig;
use autopath_bundle::{
    names, sha256_hex, Activation, BudgetPoint, Bundle, FileEntry, InputContract, Manifest, PathGraph, PolicyEntry,
    Producer, SCHEMA_VERSION,
};

pub mod parity;

pub use parity::{Check, TOLERANCE};

/// What a compile produced.
#[derive(Debug, Clone, Serialize)]
pub struct CompileReport {
    /// Bundle folder.
    pub out: PathBuf,
    /// Graph files written.
    pub files: usize,
    /// Bytes of all graphs.
    pub bundle_bytes: u64,
    /// Bytes of the raw fp32 weights (segmenter + policy), for the size ratio.
    pub weight_bytes: u64,
    /// Parity checks (empty with `--no-verify`).
    pub checks: Vec<Check>,
    /// Seconds taken.
    pub seconds: f64,
}

/// A trained policy to put in the bundle.
pub struct PolicyInput<'a> {
    /// The network.
    pub net: &'a PolicyNet,
    /// Keep threshold.
    pub threshold: f32,
    /// How it was trained (None for an untrained policy).
    pub training: Option<autopath_bundle::PolicyTraining>,
}

/// Whether to check the graphs, whether to replace an existing folder, how to write 3D convolutions.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Run the parity checks against an f64 copy of the model (`--no-verify` turns them off).
    pub verify: bool,
    /// Replace an existing bundle folder.
    pub force: bool,
    /// How the graphs write 3D convolutions (`--conv3d`).
    pub conv: Conv3dLayout,
    /// Also write the head split in two graphs (`head_low.onnx`, `head_rest.onnx`) where the head
    /// splits: for the bundles that score many paths per volume; a deployed bundle has no use for them.
    pub split_head: bool,
    /// Whole-path graphs for at most this many of the paths the policy takes most often on the
    /// calibration volumes (`--path-graphs`).
    pub path_graphs: usize,
    /// The graphs' measured times (`--cost`, from `autopath bench --calibrate`): stored in the manifest
    /// with the policy's time budget curve.
    pub cost: Option<autopath_bundle::MeasuredCost>,
    /// How the graphs write the stem's convolution (`--stem`).
    pub stem: autopath_bundle::StemForm,
    /// The segmenter graphs' number format (`--precision`).
    pub precision: autopath_bundle::Precision,
}

/// Whole-path graphs a bundle gets by default: the demo's policy takes 2–5 distinct paths.
pub const DEFAULT_PATH_GRAPHS: usize = 4;

impl CompileOptions {
    /// Options for a bundle that only `provider` will run (the segmenter bundles that `eval` and
    /// `train-policy` score paths with): depth taps on the CPU, where they are faster, native 3D
    /// convolutions on a GPU provider.
    pub fn for_provider(provider: crate::deploy::ExecutionProvider) -> Self {
        let conv = match provider {
            crate::deploy::ExecutionProvider::Cpu => Conv3dLayout::DepthTaps,
            _ => Conv3dLayout::Native,
        };
        CompileOptions {
            verify: true,
            force: true,
            conv,
            split_head: true,
            path_graphs: 0,
            cost: None,
            stem: autopath_bundle::StemForm::Conv,
            precision: autopath_bundle::Precision::Fp32,
        }
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            verify: true,
            force: false,
            conv: Conv3dLayout::Native,
            split_head: false,
            path_graphs: DEFAULT_PATH_GRAPHS,
            cost: None,
            stem: autopath_bundle::StemForm::Conv,
            precision: autopath_bundle::Precision::Fp32,
        }
    }
}

/// A bundle of a seeded, untrained network and policy (`compile --untrained`): the graphs and costs of
/// a trained one, for latency measurements at sizes nobody trained.
pub fn compile_untrained(
    arch: &str,
    width: usize,
    patch: [usize; 3],
    decoder: autopath_models::spec::DecoderKind,
    out: &Path,
    opts: CompileOptions,
) -> Result<CompileReport> {
    use candle_core::{DType, Device};
    let mut spec = autopath_models::spec::ArchSpec::preset(arch, width, patch)
        .ok_or_else(|| Error::invalid("--untrained", format!("unknown architecture {arch}")))?;
    spec.decoder = decoder;
    let model = crate::study::train::segment::Model::new(&spec, 1, &Device::Cpu)?;
    let vars = autopath_models::init::SeededVarMap::new(2);
    let policy = PolicyNet::load(vars.var_builder(DType::F32, &Device::Cpu), &spec)
        .map_err(Error::candle("untrained policy"))?;
    let input = PolicyInput { net: &policy, threshold: 0.5, training: None };
    compile(&model.net, &TrainConfig::for_spec(spec), Some(input), None, out, opts)
}

/// Compiles a trained segmenter (and optionally a policy) into `out`: the bundle is built and checked
/// in a temporary sibling folder and renamed into place only when complete.
pub fn compile(
    net: &DeepLab3d,
    cfg: &TrainConfig,
    policy: Option<PolicyInput>,
    evaluation: Option<serde_json::Value>,
    out: &Path,
    opts: CompileOptions,
) -> Result<CompileReport> {
    let t0 = Instant::now();
    if out.exists() && !opts.force {
        return Err(Error::invalid("--out", format!("{} exists; pass --force to replace it", out.display())));
    }
    let spec = net.spec();
    if let Some(p) = policy.as_ref().filter(|p| p.net.num_blocks() != spec.num_blocks()) {
        return Err(Error::invalid(
            "--policy",
            format!("the policy decides on {} blocks; the segmenter has {}", p.net.num_blocks(), spec.num_blocks()),
        ));
    }
    if opts.stem == autopath_bundle::StemForm::SpaceToDepth && cfg.window.patch.iter().any(|n| n % 2 == 1) {
        return Err(Error::invalid(
            "--stem",
            format!("space-to-depth needs even tile sizes, not {:?}", cfg.window.patch),
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    let mut graphs = autopath_export::compile(
        net,
        policy.as_ref().map(|p| p.net),
        cfg.window.patch,
        version,
        (opts.conv, opts.stem),
    )?;
    let split = match opts.split_head {
        true => autopath_export::split_head(net, cfg.window.patch, version, opts.conv)?,
        false => None,
    };
    let split_head = split.is_some();
    graphs.extend(split.into_iter().flatten());
    let calibration = match &policy {
        Some(p) => calibrate(p.net, cfg)?,
        None => Calibration::default(),
    };
    let paths = match &policy {
        Some(p) => frequent_paths(&calibration.probabilities, p.threshold, opts.path_graphs),
        None => Vec::new(),
    };
    for (keep, _) in &paths {
        graphs.push(autopath_export::path_graph(net, keep, cfg.window.patch, version, (opts.conv, opts.stem))?);
    }
    autopath_export::with_precision(&mut graphs, opts.precision)?;

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = crate::atomic::temporary_sibling(out);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let calibrated = Calibrated { calibration: &calibration, paths: &paths };
    match build(&tmp, net, cfg, (policy.as_ref(), calibrated), evaluation, &graphs, (opts, split_head)) {
        Ok((bundle_bytes, checks)) => {
            if out.exists() {
                std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            let weight_bytes = 4 * (spec.parameter_count() + policy.as_ref().map_or(0, |p| policy_params(p.net)));
            Ok(CompileReport {
                out: out.to_path_buf(),
                files: graphs.len(),
                bundle_bytes,
                weight_bytes,
                checks,
                seconds: t0.elapsed().as_secs_f64(),
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Writes the graphs and the manifest into `dir` and, with `verify`, runs the parity checks on them.
/// Returns the graphs' bytes and the checks.
fn build(
    dir: &Path,
    net: &DeepLab3d,
    cfg: &TrainConfig,
    (policy, calibrated): (Option<&PolicyInput>, Calibrated),
    evaluation: Option<serde_json::Value>,
    graphs: &[autopath_export::GraphFile],
    (opts, split_head): (CompileOptions, bool),
) -> Result<(u64, Vec<Check>)> {
    let spec = net.spec();
    let mut files = BTreeMap::new();
    let mut bundle_bytes = 0;
    for g in graphs {
        std::fs::write(dir.join(&g.file), &g.bytes).map_err(|e| Error::io(dir.join(&g.file), e))?;
        bundle_bytes += g.bytes.len() as u64;
        files.insert(
            g.file.clone(),
            FileEntry { sha256: sha256_hex(&g.bytes), bytes: g.bytes.len() as u64, role: g.role.clone() },
        );
    }
    let architecture = autopath_export::architecture(net, cfg.window.patch, split_head);
    if let Some(c) = &opts.cost {
        c.validate(architecture.blocks.len()).map_err(|e| Error::invalid("--cost", e))?;
    }
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        producer: Producer {
            autopath: env!("CARGO_PKG_VERSION").into(),
            onnx_opset: autopath_export::OPSET,
            onnx_ir_version: autopath_export::IR_VERSION,
            onnx_runtime: crate::deploy::ort_library::ORT_VERSION.into(),
            conv3d: opts.conv,
            stem: opts.stem,
            precision: opts.precision,
        },
        architecture: architecture.clone(),
        input: input_contract(cfg, crate::study::train::infer::activation(spec.output)),
        policy: policy.map(|p| PolicyEntry {
            file: names::POLICY_FILE.into(),
            input: spec.policy.input,
            threshold: p.threshold,
            training: p.training.clone(),
            budget: BudgetPoint::curve(&calibrated.calibration.probabilities, &architecture),
            guard: autopath_bundle::Guard::calibrate(&calibrated.calibration.features),
            path_graphs: calibrated
                .paths
                .iter()
                .map(|(keep, volumes)| {
                    let mask = crate::labels::mask_text(keep);
                    PathGraph { file: names::path_file(&mask), mask, volumes: *volumes }
                })
                .collect(),
            time_budget: opts
                .cost
                .as_ref()
                .map(|c| BudgetPoint::curve(&calibrated.calibration.probabilities, c))
                .unwrap_or_default(),
        }),
        evaluation,
        files,
        measured_cost: opts.cost.clone(),
    };
    crate::study::train::checkpoint::write_json(&dir.join(names::MANIFEST), &manifest)?;
    let mut checks = Vec::new();
    if opts.verify {
        let bundle = Bundle::load(dir)?;
        let mut s = Sessions::open(&bundle, &SessionOptions::default())?;
        s.open_split_head(&bundle)?;
        checks = parity::verify(net, policy.map(|p| p.net), &mut s, (cfg.window.patch, opts.precision))?;
        if let Some(e) = parity::failure(&checks) {
            return Err(e);
        }
    }
    Ok((bundle_bytes, checks))
}

/// What the bundle expects of its input and how it labels the output.
fn input_contract(cfg: &TrainConfig, activation: Activation) -> InputContract {
    InputContract {
        modality: cfg.modality.clone().unwrap_or_else(|| match cfg.preprocessing.intensity {
            crate::input::preprocess::Intensity::Ct { .. } => "CT".into(),
            crate::input::preprocess::Intensity::Zscore => "MR".into(),
        }),
        orientation: "voxels are processed in stored order; outputs carry the input's header geometry (dims, pixdim, qform/sform)".into(),
        preprocessing: cfg.preprocessing,
        window: cfg.window,
        activation,
        threshold: crate::labels::FOREGROUND_THRESHOLD,
        labels: if cfg.labels.len() == activation.channels().max(2) {
            cfg.labels.clone()
        } else {
            match activation {
                Activation::Sigmoid => vec!["background".into(), "liver".into()],
                Activation::Softmax { .. } => vec!["background".into(), "liver".into(), "tumour".into()],
            }
        },
    }
}

/// The policy on the segmenter run's validation and training volumes: its keep probabilities (for the
/// `--budget` calibration, [`BudgetPoint::curve`], and the whole-path graphs) and its input's intensity
/// features (for `--guard`, [`autopath_bundle::Guard`]). Both sets are used because a validation split
/// of a few volumes alone gives a curve of a few coarse steps. Empty without the run's data (a network
/// built in code).
#[derive(Default)]
struct Calibration {
    probabilities: Vec<Vec<f32>>,
    features: Vec<Vec<f64>>,
}

/// The calibration and the whole-path graphs chosen from it, for the manifest.
#[derive(Clone, Copy)]
struct Calibrated<'a> {
    calibration: &'a Calibration,
    paths: &'a [(Vec<bool>, usize)],
}

fn calibrate(policy: &PolicyNet, cfg: &TrainConfig) -> Result<Calibration> {
    let ids: Vec<String> = cfg.val_ids.iter().chain(&cfg.train_ids).cloned().collect();
    if ids.is_empty() || !cfg.data.is_dir() {
        return Ok(Calibration::default());
    }
    let dataset = crate::study::dataset::Dataset::open(&cfg.data, Some(cfg.layout))?;
    let (probabilities, features) = crate::study::train::segment::cases_by_id(&dataset, &ids)?
        .iter()
        .map(|c| {
            let s = crate::study::train::data::load_sample(c, &cfg.preprocessing)?;
            let small = crate::input::preprocess::resample_linear(&s.image, cfg.spec.policy.input);
            let features = autopath_bundle::guard::features(small.as_slice().unwrap_or_default());
            let p = crate::study::train::infer::keep_probabilities(policy, &s.image, cfg.spec.policy.input)?;
            Ok((p, features))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(Calibration { probabilities, features })
}

/// The `most` paths taken most often at `threshold` (ties: the first seen), with their counts; not the
/// path that keeps every block (`full.onnx` is that one).
fn frequent_paths(probabilities: &[Vec<f32>], threshold: f32, most: usize) -> Vec<(Vec<bool>, usize)> {
    let mut counts: Vec<(Vec<bool>, usize)> = Vec::new();
    for p in probabilities {
        let keep: Vec<bool> = p.iter().map(|&v| v >= threshold).collect();
        if keep.iter().all(|&k| k) {
            continue;
        }
        match counts.iter_mut().find(|(k, _)| *k == keep) {
            Some((_, n)) => *n += 1,
            None => counts.push((keep, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.truncate(most);
    counts
}

fn policy_params(p: &PolicyNet) -> u64 {
    let mut n = p.fc.weight().elem_count() as u64 + p.fc.bias().map_or(0, |b| b.elem_count() as u64);
    for u in std::iter::once(&p.stem).chain(p.blocks.iter().flat_map(|b| b.branch.iter().chain(&b.shortcut))) {
        n += u.conv.weight().elem_count() as u64 + 2 * u.bn.gamma().elem_count() as u64;
    }
    n
}
