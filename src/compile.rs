//! `autopath compile`: trained models → a verified bundle folder, written under a temporary name and
//! renamed into place only after every parity check passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autopath_models::deeplab::{DeepLab3d, Path as BlockPath};
use autopath_models::policy::PolicyNet;
use autopath_models::spec::{BlockKind, Output};
use candle_core::{Device, Tensor};
use ndarray::{Array5, ArrayView5};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use crate::bundle::{
    sha256_hex, Activation, Architecture, BlockEntry, Bundle, FileEntry, InputContract, Manifest, PolicyEntry,
    Producer, SCHEMA_VERSION,
};
use crate::error::{Error, Result};
use crate::runtime::{SessionOptions, Sessions};
use crate::train::predict::probabilities;
use crate::train::segment::TrainConfig;

/// Relative error above which a parity check fails (fp32).
pub const TOLERANCE: f64 = 1e-4;

/// One numerical comparison made at compile time.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was compared.
    pub name: String,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// `max_abs` relative to the largest reference magnitude.
    pub max_rel: f64,
    /// Within [`TOLERANCE`].
    pub passed: bool,
}

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
    /// Training settings to record.
    pub training: serde_json::Value,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::invalid("compile", e.to_string())
}

fn compare(name: &str, got: &[f32], want: &[f32]) -> Check {
    let max_abs = got.iter().zip(want).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let scale = want.iter().map(|v| v.abs() as f64).fold(0.0, f64::max).max(1e-6);
    let max_rel = max_abs / scale;
    Check { name: name.into(), max_abs, max_rel, passed: max_rel <= TOLERANCE && got.len() == want.len() }
}

fn random(shape: [usize; 5], seed: u64) -> Array5<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = Normal::new(0.0f32, 0.5).expect("valid");
    Array5::from_shape_simple_fn(shape, || n.sample(&mut rng))
}

fn candle_probs(net: &DeepLab3d, x: ArrayView5<f32>, path: BlockPath) -> Result<Vec<f32>> {
    let t = Tensor::from_slice(x.as_standard_layout().as_slice().expect("standard layout"), x.shape(), &Device::Cpu)
        .map_err(err)?;
    let logits = net.forward(&t, path, false).map_err(err)?;
    probabilities(&logits, net.spec().output).and_then(|p| p.flatten_all()).and_then(|p| p.to_vec1()).map_err(err)
}

/// Compiles a trained segmenter (and optionally a policy) into `out`.
pub fn compile(
    net: &DeepLab3d,
    cfg: &TrainConfig,
    policy: Option<PolicyInput>,
    evaluation: Option<serde_json::Value>,
    out: &Path,
    verify: bool,
    force: bool,
) -> Result<CompileReport> {
    let t0 = Instant::now();
    if out.exists() && !force {
        return Err(Error::invalid("--out", format!("{} exists; pass --force to replace it", out.display())));
    }
    let spec = net.spec();
    let tile = cfg.window.patch;
    let graphs =
        autopath_export::compile(net, policy.as_ref().map(|p| p.net), tile, env!("CARGO_PKG_VERSION")).map_err(err)?;

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = crate::atomic::temporary_sibling(out);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| -> Result<CompileReport> {
        let mut files = BTreeMap::new();
        let mut bundle_bytes = 0;
        for g in &graphs {
            std::fs::write(tmp.join(&g.file), &g.bytes).map_err(|e| Error::io(tmp.join(&g.file), e))?;
            bundle_bytes += g.bytes.len() as u64;
            files.insert(
                g.file.clone(),
                FileEntry { sha256: sha256_hex(&g.bytes), bytes: g.bytes.len() as u64, role: g.role.clone() },
            );
        }
        let cost = spec.cost(tile);
        let blocks = spec
            .blocks()
            .iter()
            .zip(&cost.blocks)
            .enumerate()
            .map(|(n, (b, c))| BlockEntry {
                index: n,
                name: b.name(),
                file: format!("block_{n:02}.onnx"),
                shortcut_file: b.projection.then(|| format!("shortcut_{n:02}.onnx")),
                input: c.input,
                output: c.output,
                branch_flops: c.branch_flops,
                shortcut_flops: c.shortcut_flops,
            })
            .collect();
        let activation = match spec.output {
            Output::Sigmoid => Activation::Sigmoid,
            Output::Softmax { classes } => Activation::Softmax { classes },
        };
        let manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            producer: Producer { autopath: env!("CARGO_PKG_VERSION").into(), onnx_opset: autopath_export::OPSET, onnx_ir_version: autopath_export::IR_VERSION, onnx_runtime: crate::onnxruntime::ORT_VERSION.into() },
            architecture: Architecture {
                name: spec.name.clone(),
                block: match spec.block {
                    BlockKind::Basic => "basic".into(),
                    BlockKind::Bottleneck => "bottleneck".into(),
                },
                width: spec.width,
                parameters: spec.parameter_count(),
                stem_file: "stem.onnx".into(),
                stem_flops: cost.stem_flops,
                stem_output: cost.stem_output,
                blocks,
                head_file: "head.onnx".into(),
                head_flops: cost.head_flops,
                full_file: "full.onnx".into(),
            },
            input: InputContract {
                modality: match cfg.preprocessing.intensity {
                    crate::preprocess::Intensity::Ct { .. } => "CT".into(),
                    crate::preprocess::Intensity::Zscore => "MR".into(),
                },
                orientation: "voxels are processed in stored order; outputs carry the input's header geometry (dims, pixdim, qform/sform)".into(),
                preprocessing: cfg.preprocessing,
                window: cfg.window,
                activation,
                threshold: 0.5,
                labels: match activation {
                    Activation::Sigmoid => vec!["background".into(), "liver".into()],
                    Activation::Softmax { .. } => vec!["background".into(), "liver".into(), "tumour".into()],
                },
            },
            policy: policy.as_ref().map(|p| PolicyEntry { file: "policy.onnx".into(), input: spec.policy.input, threshold: p.threshold, training: p.training.clone() }),
            evaluation,
            files,
        };
        crate::train::checkpoint::write_json(&tmp.join("manifest.json"), &manifest)?;

        let mut checks = Vec::new();
        if verify {
            let bundle = Bundle::load(&tmp)?;
            let mut s = Sessions::open(&bundle, &SessionOptions::default())?;
            let x = random([1, spec.in_channels, tile[0], tile[1], tile[2]], 1);
            let full_onnx = s.run_full(x.view())?;
            let full_candle = candle_probs(net, x.view(), BlockPath::Full)?;
            checks.push(compare("full.onnx vs Candle", full_onnx.as_slice().unwrap_or_default(), &full_candle));
            let all = vec![true; spec.num_blocks()];
            let chain = s.run_chain(x.view(), &all)?;
            checks.push(compare(
                "chain (all kept) vs full.onnx",
                chain.as_slice().unwrap_or_default(),
                full_onnx.as_slice().unwrap_or_default(),
            ));
            let alternate: Vec<bool> = (0..spec.num_blocks()).map(|n| n % 2 == 0).collect();
            let dropped = s.run_chain(x.view(), &alternate)?;
            let want = candle_probs(net, x.view(), BlockPath::Shared(&alternate))?;
            checks.push(compare(
                "chain (odd blocks dropped) vs Candle hard path",
                dropped.as_slice().unwrap_or_default(),
                &want,
            ));
            if let Some(p) = &policy {
                let pi = spec.policy.input;
                let v = random([2, spec.in_channels, pi[0], pi[1], pi[2]], 2);
                let got = s.run_policy(v.view())?;
                let t = Tensor::from_slice(v.as_slice().unwrap_or_default(), v.shape(), &Device::Cpu).map_err(err)?;
                let want: Vec<f32> =
                    p.net.forward(&t, false).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(err)?;
                checks.push(compare("policy.onnx vs Candle", got.as_slice().unwrap_or_default(), &want));
            }
            if let Some(bad) = checks.iter().find(|c| !c.passed) {
                return Err(Error::invalid(
                    "compile",
                    format!(
                        "parity check failed: {} (max abs {:.3e}, rel {:.3e} > {TOLERANCE:e})",
                        bad.name, bad.max_abs, bad.max_rel
                    ),
                ));
            }
        }
        let weight_bytes = 4 * (spec.parameter_count() + policy.as_ref().map_or(0, |p| policy_params(p.net)));
        Ok(CompileReport {
            out: out.to_path_buf(),
            files: graphs.len(),
            bundle_bytes,
            weight_bytes,
            checks,
            seconds: 0.0,
        })
    })();
    match result {
        Ok(mut report) => {
            if out.exists() {
                std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
            }
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            report.seconds = t0.elapsed().as_secs_f64();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn policy_params(p: &PolicyNet) -> u64 {
    let mut n = p.fc.weight().elem_count() as u64 + p.fc.bias().map_or(0, |b| b.elem_count() as u64);
    for u in std::iter::once(&p.stem).chain(p.blocks.iter().flat_map(|b| b.branch.iter().chain(&b.shortcut))) {
        n += u.conv.weight().elem_count() as u64 + 2 * u.bn.gamma().elem_count() as u64;
    }
    n
}
