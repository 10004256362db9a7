//! Parity of a bundle with the model it came from, segment by segment, against an **f64** copy of the
//! model. ONNX Runtime's f32 output and Candle's f32 output must both lie within [`TOLERANCE`] of the
//! f64 reference: f32 rounding then cannot fail a correct export, and an export bug cannot hide behind
//! it. Each segment is fed the reference's own input (cast to f32), so an error is charged to the
//! segment that makes it, and the first failing segment is the one named.

use autopath_models::deeplab::{BlockPath, DeepLab3d};
use autopath_models::policy::PolicyNet;
use candle_core::{DType, Device, Tensor};
use ndarray::{Array5, ArrayView5};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use crate::deploy::chain::Segment;
use crate::deploy::Sessions;
use crate::error::{Error, Result};
use crate::study::train::infer::probabilities;

/// Relative error (largest absolute difference over the reference's largest magnitude, at least 1 for
/// probabilities) above which a parity check fails.
pub const TOLERANCE: f64 = 1e-4;

/// The same limit for fp16 graphs (`compile --precision fp16`): fp16 keeps 11 significant bits (unit
/// roundoff 2⁻¹¹ ≈ 4.9e-4) and rounds the input, the weights and every intermediate value. Measured on
/// seeded r18/r50 networks with both decoders: each block 1e-4 to 4e-4, whole networks up to 8.0e-3
/// (r50 with the skip decoder); the demo's trained r18 6e-6 on probabilities. 2e-2 leaves room for
/// those and still fails an export that mixes up a weight or an operator (errors of order 1e-1 to 1).
pub const FP16_TOLERANCE: f64 = 2e-2;

/// The limit ONNX Runtime's output is held to for graphs of `precision`.
pub fn tolerance(precision: autopath_bundle::Precision) -> f64 {
    match precision {
        autopath_bundle::Precision::Fp32 => TOLERANCE,
        autopath_bundle::Precision::Fp16 => FP16_TOLERANCE,
    }
}

/// What a compared output holds, which sets the scale its error is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Feature maps: relative to their largest magnitude, whatever it is.
    Features,
    /// Probabilities in [0, 1]: relative to at least 1. A tile the network calls background everywhere
    /// has probabilities of about 1e-3, where ONNX Runtime's sigmoid rounding (about 1e-7 absolute,
    /// irrelevant next to the 0.5 threshold) would otherwise read as 1e-4 relative and fail a correct
    /// export (measured on a demo segmenter with the skip decoder).
    Probabilities,
}

/// One comparison made at compile time: a bundle graph (ONNX Runtime, f32) and the Candle model (f32)
/// against the f64 reference on the same input.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The segment or composition compared: `stem`, `block_03`, `shortcut_04`, `head`,
    /// `head_low + head_rest` (the split head), `full.onnx`, `chain …`, `policy`.
    pub name: String,
    /// ONNX Runtime vs the f64 reference: largest absolute difference.
    pub max_abs: f64,
    /// ONNX Runtime vs the f64 reference: `max_abs` over the reference's largest magnitude.
    pub max_rel: f64,
    /// Candle f32 vs the f64 reference, relative as `max_rel` (absent where Candle has no such
    /// segment, e.g. the chain).
    pub candle_max_rel: Option<f64>,
    /// The limit `max_rel` is held to: [`TOLERANCE`], or [`FP16_TOLERANCE`] for fp16 graphs (Candle's
    /// f32 model is always held to [`TOLERANCE`]).
    pub limit: f64,
    /// Both within their limits.
    pub passed: bool,
}

impl Check {
    /// The line `compile` prints, and the reason a failing check gives.
    pub fn describe(&self) -> String {
        let candle = self.candle_max_rel.map(|r| format!(", Candle f32 rel {r:.2e}")).unwrap_or_default();
        format!(
            "{}: ONNX Runtime max abs {:.2e}, rel {:.2e}{candle} (vs the f64 model; limit {:e})",
            self.name, self.max_abs, self.max_rel, self.limit
        )
    }
}

fn err(e: candle_core::Error) -> Error {
    Error::candle("compile parity check")(e)
}

/// Largest absolute and relative difference of `got` from `want`.
fn difference(got: &[f32], want: &[f64], output: Output) -> (f64, f64) {
    if got.len() != want.len() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let max_abs = got.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    let floor = match output {
        Output::Features => 1e-6,
        Output::Probabilities => 1.0,
    };
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max).max(floor);
    (max_abs, max_abs / scale)
}

/// ONNX Runtime's output `ort` (held to `limit`) and Candle's (held to [`TOLERANCE`]) against `want`.
fn check(
    name: String,
    ort: &[f32],
    candle: Option<&Tensor>,
    (want, output): (&Tensor, Output),
    limit: f64,
) -> Result<Check> {
    let want = f64s(want)?;
    let (max_abs, max_rel) = difference(ort, &want, output);
    let candle_max_rel = candle.map(|c| f32s(c).map(|c| difference(&c, &want, output).1)).transpose()?;
    let passed = max_rel <= limit && candle_max_rel.is_none_or(|r| r <= TOLERANCE);
    Ok(Check { name, max_abs, max_rel, candle_max_rel, limit, passed })
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(err)
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).map_err(err)
}

fn tensor(x: ArrayView5<f32>, dtype: DType) -> Result<Tensor> {
    let x = x.as_standard_layout();
    Tensor::from_slice(x.as_slice().unwrap_or_default(), x.shape(), &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(err)
}

fn array(t: &Tensor) -> Result<Array5<f32>> {
    let (n, c, d, h, w) = t.dims5().map_err(err)?;
    Array5::from_shape_vec((n, c, d, h, w), f32s(t)?).map_err(|e| err(candle_core::Error::wrap(e)))
}

/// A probe input: values spread like a normalised CT tile.
pub(crate) fn probe(shape: [usize; 5], seed: u64) -> Array5<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = Normal::new(0.0f32, 0.5).expect("valid");
    Array5::from_shape_simple_fn(shape, || n.sample(&mut rng))
}

/// Every segment of the segmenter, then the compositions (full graph, chains), then the policy.
pub fn verify(
    net: &DeepLab3d,
    policy: Option<&PolicyNet>,
    s: &mut Sessions,
    (tile, precision): ([usize; 3], autopath_bundle::Precision),
) -> Result<Vec<Check>> {
    let spec = net.spec();
    let limit = tolerance(precision);
    let reference = net.to_dtype(DType::F64).map_err(err)?;
    let x = probe([1, spec.in_channels, tile[0], tile[1], tile[2]], 1);
    let mut checks = segment_checks(net, &reference, s, &x, (tile, limit))?;
    checks.extend(composition_checks(net, &reference, s, &x, limit)?);
    if let Some(p) = policy {
        let pi = spec.policy.input;
        let v = probe([2, spec.in_channels, pi[0], pi[1], pi[2]], 2);
        let v64 = tensor(v.view(), DType::F64)?;
        let want = p.to_dtype(DType::F64).and_then(|r| r.forward(&v64, false)).map_err(err)?;
        let ort = s.run_policy(v.view())?;
        let candle = p.forward(&tensor(v.view(), DType::F32)?, false).map_err(err)?;
        let ort = ort.as_slice().unwrap_or_default();
        checks.push(check("policy".into(), ort, Some(&candle), (&want, Output::Probabilities), TOLERANCE)?);
    }
    Ok(checks)
}

/// Stem, each block (kept and, with a projection, dropped), head: each fed the reference's own input.
fn segment_checks(
    net: &DeepLab3d,
    reference: &DeepLab3d,
    s: &mut Sessions,
    x: &Array5<f32>,
    (tile, limit): ([usize; 3], f64),
) -> Result<Vec<Check>> {
    let spec = net.spec();
    let mut checks = Vec::new();
    let mut push = |name: String, ort: &Array5<f32>, candle: &Tensor, want: &Tensor, output: Output| -> Result<()> {
        checks.push(check(name, ort.as_slice().unwrap_or_default(), Some(candle), (want, output), limit)?);
        Ok(())
    };
    let mut h = reference.stem(&tensor(x.view(), DType::F64)?, false).map_err(err)?;
    let mut low = None;
    let candle = net.stem(&tensor(x.view(), DType::F32)?, false).map_err(err)?;
    push("stem".into(), &s.run_segment(Segment::Stem, x.view())?, &candle, &h, Output::Features)?;
    for (n, (b64, b32)) in reference.blocks.iter().zip(&net.blocks).enumerate() {
        let input = array(&h)?;
        let input32 = tensor(input.view(), DType::F32)?;
        if b64.shortcut.is_some() {
            let want = b64.shortcut(&h, false).map_err(err)?;
            let ort = s.run_segment(Segment::Shortcut(n), input.view())?;
            let candle = b32.shortcut(&input32, false).map_err(err)?;
            push(format!("shortcut_{n:02}"), &ort, &candle, &want, Output::Features)?;
        }
        let want = b64.forward(&h, autopath_models::block::BlockKeep::All, false).map_err(err)?;
        let ort = s.run_segment(Segment::Block(n), input.view())?;
        let candle = b32.forward(&input32, autopath_models::block::BlockKeep::All, false).map_err(err)?;
        push(format!("block_{n:02}"), &ort, &candle, &want, Output::Features)?;
        h = want;
        if spec.low_level_block() == Some(n) {
            low = Some(h.clone());
        }
    }
    let features = array(&h)?;
    let low64 = low.as_ref();
    let low = low64.map(array).transpose()?;
    let probs = |net: &DeepLab3d, f: &Tensor, low: Option<&Tensor>| {
        net.head(f, low, tile, false).and_then(|l| probabilities(&l, spec.output)).map_err(err)
    };
    let want = probs(reference, &h, low64)?;
    let ort = s.run_head(features.view(), low.as_ref().map(|l| l.view()))?;
    let low32 = low.as_ref().map(|l| tensor(l.view(), DType::F32)).transpose()?;
    let candle = probs(net, &tensor(features.view(), DType::F32)?, low32.as_ref())?;
    push("head".into(), &ort, &candle, &want, Output::Probabilities)?;
    if let (Some(l), true) = (&low, s.split_head.is_some()) {
        let skip = s.run_skip_part(l.view())?;
        let ort = s.run_head_after_skip_with(features.view(), skip.view(), |p| p.to_owned())?;
        push("head_low + head_rest".into(), &ort, &candle, &want, Output::Probabilities)?;
    }
    Ok(checks)
}

/// The compositions the runtime actually runs, on the probe: `full.onnx`, the chain with every block
/// kept and with the odd blocks dropped, and every whole-path graph.
fn composition_checks(
    net: &DeepLab3d,
    reference: &DeepLab3d,
    s: &mut Sessions,
    x: &Array5<f32>,
    limit: f64,
) -> Result<Vec<Check>> {
    let spec = net.spec();
    let forward = |net: &DeepLab3d, x: &Tensor, path: BlockPath| {
        net.forward(x, path, false).and_then(|l| probabilities(&l, spec.output)).map_err(err)
    };
    let (x64, x32) = (tensor(x.view(), DType::F64)?, tensor(x.view(), DType::F32)?);
    let full = forward(reference, &x64, BlockPath::Full)?;
    let candle = forward(net, &x32, BlockPath::Full)?;
    let ort = s.run_full(x.view())?;
    let p = Output::Probabilities;
    let mut checks = vec![check(
        autopath_bundle::names::FULL_FILE.into(),
        ort.as_slice().unwrap_or_default(),
        Some(&candle),
        (&full, p),
        limit,
    )?];
    let chain = s.run_chain(x.view(), &vec![true; spec.num_blocks()])?;
    checks.push(check("chain, all blocks kept".into(), chain.as_slice().unwrap_or_default(), None, (&full, p), limit)?);
    let alternate: Vec<bool> = (0..spec.num_blocks()).map(|n| n % 2 == 0).collect();
    let want = forward(reference, &x64, BlockPath::Shared(&alternate))?;
    let chain = s.run_chain(x.view(), &alternate)?;
    let candle = forward(net, &x32, BlockPath::Shared(&alternate))?;
    let name = "chain, odd blocks dropped".to_string();
    checks.push(check(name, chain.as_slice().unwrap_or_default(), Some(&candle), (&want, p), limit)?);
    for keep in s.path_masks() {
        let want = forward(reference, &x64, BlockPath::Shared(&keep))?;
        let candle = forward(net, &x32, BlockPath::Shared(&keep))?;
        let ort = s.run_path_with(x.view(), &keep, |a| a.to_owned())?;
        let name = autopath_bundle::names::path_file(&crate::labels::mask_text(&keep));
        checks.push(check(name, ort.as_slice().unwrap_or_default(), Some(&candle), (&want, p), limit)?);
    }
    Ok(checks)
}

/// The error for the first failing check, naming the segment. When Candle's own f32 evaluation misses
/// the f64 model as well, the export is not what is wrong: the model is ill-conditioned in f32, and the
/// message says so.
pub fn failure(checks: &[Check]) -> Option<Error> {
    let bad = checks.iter().find(|c| !c.passed)?;
    let cause = if bad.candle_max_rel.is_some_and(|r| r > TOLERANCE) {
        "; Candle's f32 model misses the f64 model too, so the model is ill-conditioned in f32 rather than \
         mis-exported (for example BatchNorm statistics that lag the weights, as in checkpoints written before \
         `autopath train` recomputed them at each validation: train it again)"
    } else {
        ""
    };
    Some(Error::invalid(
        "compile",
        format!(
            "parity check failed at {}{cause}; the bundle was not written (`--no-verify` skips the check)",
            bad.describe()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probabilities are judged against 1, features against their own largest magnitude.
    #[test]
    fn tiny_probabilities_are_judged_on_the_probability_scale() {
        let want = [1.2e-3, 4.0e-4, 9.0e-4];
        let got = [1.2e-3 + 1.3e-7, 4.0e-4, 9.0e-4];
        let (abs, rel) = difference(&got, &want, Output::Probabilities);
        assert!((abs - 1.3e-7).abs() < 1e-9 && rel <= TOLERANCE, "{rel}");
        let (_, rel) = difference(&got, &want, Output::Features);
        assert!(rel > TOLERANCE, "the same difference on features of that size fails: {rel}");
        let (_, rel) = difference(&[0.5, 0.7], &[0.5, 0.7003], Output::Probabilities);
        assert!(rel > TOLERANCE, "3e-4 off on probabilities fails: {rel}");
    }
}
