//! `autopath device-check`: does training on a device compute what the CPU computes?
//!
//! Three measurements, each against the CPU kernels as reference:
//! 1. every convolution and pooling shape of the networks, forward and both gradients;
//! 2. the loss curve of the same seeded training steps (same initial weights, same batches), and the
//!    same steps taken from the CPU run's weights (loss and gradients, step by step);
//! 3. the time of one training step at a chosen size.
//!
//! On a GPU the device is CUDA. Without one, `--device cpu` runs the composed path that CUDA takes on
//! the CPU ([`autopath_models::ops::set_composed`]), so the same code is checked before a GPU exists.

use std::time::Instant;

use autopath_models::deeplab::{BlockPath, STEM_POOL};
use autopath_models::layers::{max_pool3d, MaxPool3dParams};
use autopath_models::loss::segmentation_loss;
use autopath_models::ops::{conv3d, set_composed, set_precision, Conv3dParams, TrainPrecision};
use autopath_models::optim::Adam;
use autopath_models::spec::ArchSpec;
use candle_core::{Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::segment::Model;
use crate::error::{Error, Result};

fn candle(e: candle_core::Error) -> Error {
    Error::candle("device check")(e)
}

/// One operator shape compared on the device against the CPU kernel.
#[derive(Debug, Clone, Serialize)]
pub struct OpCheck {
    /// Which layer of the networks this shape is.
    pub name: String,
    /// max |device − cpu| / max |cpu| of the output.
    pub output: f64,
    /// The same for the input gradient.
    pub input_grad: f64,
    /// The same for the weight gradient (0 for pooling, which has none).
    pub weight_grad: f64,
}

/// Training steps from one seed on the CPU kernels and on the device.
#[derive(Debug, Clone, Serialize)]
pub struct StepCheck {
    /// Loss per step with the CPU kernels.
    pub cpu: Vec<f64>,
    /// Loss per step on the device.
    pub device: Vec<f64>,
    /// |device − cpu| / |cpu| of the loss, step by step.
    pub rel: Vec<f64>,
    /// |mean device loss − mean cpu loss| / mean cpu loss over all steps.
    pub mean_rel: f64,
}

/// Relative tolerance of the operator comparisons.
pub const OP_TOLERANCE: f64 = 1e-5;
/// The same for convolutions in bf16 (`train --precision bf16`): bf16 keeps 8 significant bits (unit
/// roundoff 2⁻⁹ ≈ 2e-3 on each input and weight), and a sum of thousands of such products lands within
/// about 1e-2 of the f32 result relative to the largest output (measured in docs/gpu.md).
pub const BF16_OP_TOLERANCE: f64 = 2e-2;
/// Relative tolerance of the first training step's loss (one forward pass: rounding only).
pub const FIRST_STEP_TOLERANCE: f64 = 1e-4;
/// Relative tolerance of the second step's loss (after one Adam update).
pub const SECOND_STEP_TOLERANCE: f64 = 1e-3;

fn random(shape: &[usize], rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, device).map_err(candle)
}

fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu).map_err(candle)?;
    let diff = (&a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).map_err(candle)?;
    let scale = b.abs().and_then(|d| d.max_all()).map_err(candle)?;
    let (d, s) = (diff.to_scalar::<f32>().map_err(candle)?, scale.to_scalar::<f32>().map_err(candle)?);
    Ok(f64::from(d) / f64::from(s).max(f64::from(f32::MIN_POSITIVE)))
}

/// Output and gradients of `sum(op(x, w) · r)` for a fixed `r`, with the kernels of `device` at
/// `precision`.
fn conv_run(
    x: &Tensor,
    w: &Tensor,
    p: Conv3dParams,
    device: &Device,
    (composed, precision): (bool, TrainPrecision),
) -> Result<[Tensor; 3]> {
    set_composed(composed);
    set_precision(precision);
    let xv = Var::from_tensor(&x.to_device(device).map_err(candle)?).map_err(candle)?;
    let wv = Var::from_tensor(&w.to_device(device).map_err(candle)?).map_err(candle)?;
    let y = conv3d(xv.as_tensor(), wv.as_tensor(), p).map_err(candle)?;
    let r = random(y.dims(), &mut ChaCha8Rng::seed_from_u64(99), device)?;
    let grads = (&y * &r).and_then(|t| t.sum_all()).and_then(|t| t.backward()).map_err(candle)?;
    set_composed(false);
    set_precision(TrainPrecision::Fp32);
    let g = |v: &Var| grads.get(v.as_tensor()).cloned().ok_or_else(|| Error::invalid("device check", "no gradient"));
    Ok([y, g(&xv)?, g(&wv)?])
}

/// Every convolution shape of the networks on `device` at `precision` (then, at fp32, the pooling
/// shape) against the CPU kernels in f32.
pub fn check_ops(device: &Device, precision: TrainPrecision) -> Result<Vec<OpCheck>> {
    let composed = device.is_cpu();
    let p = |s: [usize; 3], pad: usize, dil: usize| Conv3dParams { stride: s, padding: [pad; 3], dilation: [dil; 3] };
    let convs: [(&str, [usize; 5], [usize; 5], Conv3dParams); 10] = [
        ("conv stem 7³ stride 2", [2, 1, 16, 40, 40], [16, 1, 7, 7, 7], p([2; 3], 3, 1)),
        ("conv 3³ stride 1", [2, 16, 8, 20, 20], [16, 16, 3, 3, 3], p([1; 3], 1, 1)),
        // The deep stages' channel counts (the CPU's channel tiles): 128 on 3×3 planes, a transition
        // into 64 channels, ASPP's dilation 6 into 64 on a 3×3 map (a trimmed kernel).
        ("conv 3³ stride 1, 128 channels", [2, 128, 8, 3, 3], [128, 128, 3, 3, 3], p([1; 3], 1, 1)),
        ("conv 3³ stride (1,2,2), 32 → 64", [2, 32, 8, 12, 12], [64, 32, 3, 3, 3], p([1, 2, 2], 1, 1)),
        ("conv ASPP dilation 6, 128 → 64", [2, 128, 8, 3, 3], [64, 128, 3, 3, 3], p([1; 3], 6, 6)),
        ("conv 3³ stride (1,2,2)", [2, 16, 8, 20, 20], [32, 16, 3, 3, 3], p([1, 2, 2], 1, 1)),
        ("conv 3³ stride 2", [2, 16, 8, 20, 20], [32, 16, 3, 3, 3], p([2; 3], 1, 1)),
        ("conv ASPP dilation 6", [2, 32, 6, 10, 10], [16, 32, 3, 3, 3], p([1; 3], 6, 6)),
        ("conv ASPP dilation 18", [2, 32, 6, 10, 10], [16, 32, 3, 3, 3], p([1; 3], 18, 18)),
        ("conv 1³ projection (1,2,2)", [2, 16, 8, 20, 20], [32, 16, 1, 1, 1], p([1, 2, 2], 0, 1)),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut out = Vec::new();
    for (name, xs, ws, params) in convs {
        let (x, w) = (random(&xs, &mut rng, &Device::Cpu)?, random(&ws, &mut rng, &Device::Cpu)?);
        let reference = conv_run(&x, &w, params, &Device::Cpu, (false, TrainPrecision::Fp32))?;
        let got = conv_run(&x, &w, params, device, (composed, precision))?;
        out.push(OpCheck {
            name: name.into(),
            output: rel(&got[0], &reference[0])?,
            input_grad: rel(&got[1], &reference[1])?,
            weight_grad: rel(&got[2], &reference[2])?,
        });
    }
    if precision != TrainPrecision::Fp32 {
        return Ok(out);
    }
    let pools: [(&str, [usize; 5], MaxPool3dParams); 1] = [("max pool 3³ stride 2", [2, 16, 8, 20, 20], STEM_POOL)];
    for (name, xs, params) in pools {
        let x = random(&xs, &mut rng, &Device::Cpu)?;
        let run = |dev: &Device, composed: bool| -> Result<[Tensor; 2]> {
            set_composed(composed);
            let xv = Var::from_tensor(&x.to_device(dev).map_err(candle)?).map_err(candle)?;
            let y = max_pool3d(xv.as_tensor(), params).map_err(candle)?;
            let r = random(y.dims(), &mut ChaCha8Rng::seed_from_u64(98), dev)?;
            let grads = (&y * &r).and_then(|t| t.sum_all()).and_then(|t| t.backward()).map_err(candle)?;
            set_composed(false);
            let g = grads.get(xv.as_tensor()).cloned().ok_or_else(|| Error::invalid("device check", "no gradient"))?;
            Ok([y, g])
        };
        let (reference, got) = (run(&Device::Cpu, false)?, run(device, composed)?);
        out.push(OpCheck {
            name: name.into(),
            output: rel(&got[0], &reference[0])?,
            input_grad: rel(&got[1], &reference[1])?,
            weight_grad: 0.0,
        });
    }
    Ok(out)
}

/// A synthetic batch: noise with a bright ball, labelled as the ball. The same on every device.
fn batch(spec: &ArchSpec, batch: usize, step: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let p = spec.patch;
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + step as u64);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..batch {
        let c: Vec<f64> = p.iter().map(|&n| n as f64 * rng.random_range(0.3..0.7)).collect();
        let r = p.iter().copied().min().unwrap_or(1) as f64 * 0.3;
        for z in 0..p[0] {
            for y in 0..p[1] {
                for x in 0..p[2] {
                    let d = ((z as f64 - c[0]).powi(2) + (y as f64 - c[1]).powi(2) + (x as f64 - c[2]).powi(2)).sqrt();
                    let inside = d < r;
                    xs.push(f32::from(u8::from(inside)) + rng.random::<f32>() * 0.5 - 0.25);
                    ys.push(f32::from(u8::from(inside)));
                }
            }
        }
    }
    let x = Tensor::from_vec(xs, (batch, 1, p[0], p[1], p[2]), device).map_err(candle)?;
    let y = Tensor::from_vec(ys, (batch, p[0], p[1], p[2]), device).map_err(candle)?;
    Ok((x, y))
}

/// Losses of `steps` Adam steps from `seed` on `device` (composed kernels when `composed`).
fn losses(spec: &ArchSpec, steps: usize, seed: u64, device: &Device, composed: bool) -> Result<Vec<f64>> {
    set_composed(composed);
    let model = Model::new(spec, seed, device)?;
    let mut adam = Adam::new(model.trainable(), 1e-3).map_err(candle)?;
    let mut out = Vec::with_capacity(steps);
    for step in 0..steps {
        let (x, y) = batch(spec, 2, step, device)?;
        let logits = model.net.forward(&x, BlockPath::Full, true).map_err(candle)?;
        let loss = segmentation_loss(&logits, &y, spec.output).map_err(candle)?;
        adam.step(&loss.backward().map_err(candle)?).map_err(candle)?;
        out.push(f64::from(loss.to_scalar::<f32>().map_err(candle)?));
    }
    set_composed(false);
    Ok(out)
}

/// The same seeded training steps with the CPU kernels and on `device`.
pub fn check_steps(spec: &ArchSpec, steps: usize, seed: u64, device: &Device) -> Result<StepCheck> {
    let cpu = losses(spec, steps, seed, &Device::Cpu, false)?;
    let dev = losses(spec, steps, seed, device, device.is_cpu())?;
    let rel = cpu.iter().zip(&dev).map(|(a, b)| (a - b).abs() / a.abs().max(1e-12)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let mean_rel = (mean(&dev) - mean(&cpu)).abs() / mean(&cpu).abs().max(1e-12);
    Ok(StepCheck { cpu, device: dev, rel, mean_rel })
}

/// Training steps on the device from the CPU run's parameters: at each step the device model takes
/// the CPU model's weights, both compute the loss and the gradients of the same batch, and only the
/// CPU model steps. Why: compared free-running, the two runs become different trajectories after two
/// steps. Adam's first updates are nearly `lr · sign(gradient)`, so a rounding-level difference in a
/// near-zero gradient flips a whole step of that weight: between the CPU kernels and the composed
/// path (both correct to 1e-6 per op) single later losses were up to 2.5 % apart, and the mean over
/// 30 steps 0.06 % apart in one H200 run and 0.98 % in another. From the same weights every step is
/// an equality check of forward, loss and backward, at 30 states of a real training run.
#[derive(Debug, Clone, Serialize)]
pub struct SyncedCheck {
    /// |device − cpu| / |cpu| of the loss, step by step.
    pub loss: Vec<f64>,
    /// ‖device − cpu‖ / ‖cpu‖ of all the parameters' gradients as one vector (L2), step by step.
    pub grad: Vec<f64>,
}

/// Relative tolerance of the synced steps' losses: one forward pass from the same weights.
pub const SYNCED_LOSS_TOLERANCE: f64 = 1e-4;
/// Tolerance of the synced steps' gradients, the median over the steps of ‖device − cpu‖ / ‖cpu‖ (all
/// parameters as one vector). Why the median: single steps jump by orders of magnitude (measured
/// between the composed path and the CPU kernels on the CPU over 30 steps: median 6.1e-5, single steps
/// from 1.5e-6 to 1.9e-2, while the losses stayed within 3.6e-7), as a gradient routed by a near-tie
/// (two inputs of a max pooling, a ReLU's input at zero) can go to a different place on rounding alone.
pub const SYNCED_GRAD_TOLERANCE: f64 = 1e-3;

fn loss_and_grads(
    model: &Model,
    spec: &ArchSpec,
    x: &Tensor,
    y: &Tensor,
) -> Result<(f64, candle_core::backprop::GradStore)> {
    let logits = model.net.forward(x, BlockPath::Full, true).map_err(candle)?;
    let loss = segmentation_loss(&logits, y, spec.output).map_err(candle)?;
    let grads = loss.backward().map_err(candle)?;
    Ok((f64::from(loss.to_scalar::<f32>().map_err(candle)?), grads))
}

/// `steps` synced steps (see [`SyncedCheck`]) from `seed`.
pub fn check_synced_steps(spec: &ArchSpec, steps: usize, seed: u64, device: &Device) -> Result<SyncedCheck> {
    let cpu = Model::new(spec, seed, &Device::Cpu)?;
    let dev = Model::new(spec, seed, device)?;
    let cpu_vars = cpu.trainable();
    // The same parameters in the same order (a var map's order is its own).
    let mut by_name: std::collections::HashMap<String, Var> = dev.trainable().into_iter().collect();
    let dev_vars: Vec<(String, Var)> = cpu_vars
        .iter()
        .map(|(name, _)| by_name.remove(name).map(|v| (name.clone(), v)))
        .collect::<Option<_>>()
        .ok_or_else(|| candle(candle_core::Error::Msg("the CPU and device models have different parameters".into())))?;
    let mut adam = Adam::new(cpu_vars.clone(), 1e-3).map_err(candle)?;
    let mut out = SyncedCheck { loss: Vec::with_capacity(steps), grad: Vec::with_capacity(steps) };
    let result = (|| {
        for step in 0..steps {
            for ((_, c), (_, d)) in cpu_vars.iter().zip(&dev_vars) {
                d.set(&c.as_tensor().to_device(device).map_err(candle)?).map_err(candle)?;
            }
            let (x, y) = batch(spec, 2, step, &Device::Cpu)?;
            set_composed(false);
            let (lc, gc) = loss_and_grads(&cpu, spec, &x, &y)?;
            set_composed(device.is_cpu());
            let (xd, yd) = (x.to_device(device).map_err(candle)?, y.to_device(device).map_err(candle)?);
            let (ld, gd) = loss_and_grads(&dev, spec, &xd, &yd)?;
            set_composed(false);
            out.loss.push((ld - lc).abs() / lc.abs().max(1e-12));
            // Over all parameters as one vector: a tensor whose true gradient is zero (a convolution's
            // bias before BatchNorm) holds rounding noise alone, so per tensor it would compare noise.
            let (mut diff, mut total) = (0f64, 0f64);
            for ((_, c), (_, d)) in cpu_vars.iter().zip(&dev_vars) {
                let (Some(a), Some(b)) = (gc.get(c.as_tensor()), gd.get(d.as_tensor())) else { continue };
                let b = b.to_device(&Device::Cpu).map_err(candle)?;
                let sq = |t: &Tensor| -> Result<f64> {
                    Ok(f64::from(t.sqr().and_then(|t| t.sum_all()).and_then(|t| t.to_scalar::<f32>()).map_err(candle)?))
                };
                total += sq(a)?;
                diff += sq(&(&b - a).map_err(candle)?)?;
            }
            out.grad.push((diff / total.max(f64::MIN_POSITIVE)).sqrt());
            adam.step(&gc).map_err(candle)?;
        }
        Ok(())
    })();
    set_composed(false);
    result.map(|()| out)
}

/// Median milliseconds of one training step and of its phases, each phase closed by a device
/// synchronisation so that GPU work is charged to the phase that queued it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTime {
    /// Forward pass with autograd (train mode: batch statistics, dropout).
    pub forward: f64,
    /// BCE + soft Dice (or CE + Dice) on the logits.
    pub loss: f64,
    /// `loss.backward()`.
    pub backward: f64,
    /// The Adam update.
    pub optimizer: f64,
    /// The whole step (median of the step totals, not the sum of the phase medians).
    pub total: f64,
}

/// Times training steps (forward, loss, backward, Adam) at `spec`'s patch and `batch_size` on a
/// synthetic batch, after one warm-up step; medians over `repeats`.
pub fn time_step(spec: &ArchSpec, batch_size: usize, repeats: usize, device: &Device) -> Result<StepTime> {
    let model = Model::new(spec, 0, device)?;
    let mut adam = Adam::new(model.trainable(), 1e-3).map_err(candle)?;
    let (x, y) = batch(spec, batch_size, 0, device)?;
    let mut phases: [Vec<f64>; 5] = Default::default();
    // As training runs it (see `train`).
    autopath_models::ops::on_worker(device, || -> Result<()> {
        for i in 0..=repeats.max(1) {
            let mut marks = [Instant::now(); 5];
            let mut mark = |k: usize| -> Result<()> {
                device.synchronize().map_err(candle)?;
                marks[k] = Instant::now();
                Ok(())
            };
            mark(0)?;
            let logits = model.net.forward(&x, BlockPath::Full, true).map_err(candle)?;
            mark(1)?;
            let loss = segmentation_loss(&logits, &y, spec.output).map_err(candle)?;
            mark(2)?;
            let grads = loss.backward().map_err(candle)?;
            mark(3)?;
            adam.step(&grads).map_err(candle)?;
            mark(4)?;
            if i > 0 {
                let ms = |a: usize, b: usize| (marks[b] - marks[a]).as_secs_f64() * 1e3;
                for (k, v) in [ms(0, 1), ms(1, 2), ms(2, 3), ms(3, 4), ms(0, 4)].into_iter().enumerate() {
                    phases[k].push(v);
                }
            }
        }
        Ok(())
    })?;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [f, l, b, o, t] = &mut phases;
    Ok(StepTime { forward: median(f), loss: median(l), backward: median(b), optimizer: median(o), total: median(t) })
}

/// A timed paper-size (or any) training step for the device check's last row.
#[derive(Debug, Clone, Copy)]
pub struct TimedStep {
    /// Tile `[D, H, W]`.
    pub patch: [usize; 3],
    /// First-stage width of the r18.
    pub width: usize,
    /// Samples per step.
    pub batch: usize,
}

/// One row of the device check's table: a value, and for judged rows the tolerance and the verdict.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was compared or measured.
    pub check: String,
    /// The value as shown (`1.23e-7`, `372 ms`).
    pub value: String,
    /// Tolerance and whether the value is within it; None: shown, not judged.
    pub judged: Option<(f64, bool)>,
}

/// Everything `autopath device-check` measured: the rows of its table (with the verdicts) and the raw
/// checks, which `--json` writes.
#[derive(Debug, Serialize)]
pub struct DeviceReport {
    /// The table's rows, in order.
    #[serde(skip)]
    pub rows: Vec<Row>,
    /// Every operator shape.
    pub ops: Vec<OpCheck>,
    /// Every convolution shape with bf16 convolutions (`train --precision bf16`).
    pub bf16_ops: Vec<OpCheck>,
    /// The free-running steps.
    pub steps: StepCheck,
    /// The steps from the CPU run's weights.
    pub synced: SyncedCheck,
    /// The timed step, ms.
    pub step_ms: Option<f64>,
}

impl DeviceReport {
    /// Runs every check on `device`: each operator shape, `steps` training steps of an r18 width 16
    /// (free-running and from the CPU run's weights), and the timed step if asked.
    pub fn run(device: &Device, steps: usize, timed: Option<TimedStep>) -> Result<DeviceReport> {
        let preset = |width, patch| {
            ArchSpec::preset("r18", width, patch).ok_or_else(|| Error::invalid("architecture", "no r18 preset"))
        };
        let mut rows = Vec::new();
        let judged = |rows: &mut Vec<Row>, check: String, value: f64, tol: f64| {
            rows.push(Row { check, value: format!("{value:.2e}"), judged: Some((tol, value <= tol)) })
        };
        let ops = check_ops(device, TrainPrecision::Fp32)?;
        let bf16_ops = check_ops(device, TrainPrecision::Bf16)?;
        for (o, tol, tag) in
            ops.iter().map(|o| (o, OP_TOLERANCE, "")).chain(bf16_ops.iter().map(|o| (o, BF16_OP_TOLERANCE, " (bf16)")))
        {
            judged(&mut rows, format!("{}{tag}: output", o.name), o.output, tol);
            judged(&mut rows, format!("{}{tag}: input gradient", o.name), o.input_grad, tol);
            if !o.name.starts_with("max pool") {
                judged(&mut rows, format!("{}{tag}: weight gradient", o.name), o.weight_grad, tol);
            }
        }
        let spec = preset(16, [32, 96, 96])?;
        let free = check_steps(&spec, steps, 0, device)?;
        for (i, tol) in [(0, FIRST_STEP_TOLERANCE), (1, SECOND_STEP_TOLERANCE)] {
            if let Some(&r) = free.rel.get(i) {
                judged(&mut rows, format!("training step {}: loss", i + 1), r, tol);
            }
        }
        // Free-running curves part after two steps (Adam's early updates); shown, not judged. The synced
        // steps are the equality check.
        let shown = |check: String, value: String| Row { check, value, judged: None };
        rows.push(shown(
            format!("training steps 1..{steps} free-running: mean loss"),
            format!("{:.2e}", free.mean_rel),
        ));
        let synced = check_synced_steps(&spec, steps, 0, device)?;
        let worst = |v: &[f64]| v.iter().copied().fold(0f64, f64::max);
        let from = format!("steps 1..{steps} from the CPU run's weights");
        judged(&mut rows, format!("{from}: worst loss"), worst(&synced.loss), SYNCED_LOSS_TOLERANCE);
        let mut grads = synced.grad.clone();
        grads.sort_by(f64::total_cmp);
        let median = grads.get(grads.len() / 2).copied().unwrap_or(0.0);
        judged(&mut rows, format!("{from}: median gradient (L2, all parameters)"), median, SYNCED_GRAD_TOLERANCE);
        let why = "worst gradient (shown: near-ties route single gradients differently)";
        rows.push(shown(format!("{from}: {why}"), format!("{:.2e}", worst(&synced.grad))));
        let mut step_ms = None;
        if let Some(t) = timed {
            let ms = time_step(&preset(t.width, t.patch)?, t.batch, 3, device)?.total;
            let [d, h, w] = t.patch;
            let check = format!("training step r18 width {}, {d}×{h}×{w}, batch {}", t.width, t.batch);
            rows.push(shown(check, format!("{ms:.0} ms")));
            step_ms = Some(ms);
        }
        Ok(DeviceReport { rows, ops, bf16_ops, steps: free, synced, step_ms })
    }

    /// The table as markdown: check, value, tolerance, verdict (`ok`, `FAIL`, or `measured`).
    pub fn table(&self) -> String {
        let mut out = String::from("| check | value | tolerance | verdict |\n|---|---:|---:|---|\n");
        for r in &self.rows {
            let (tol, verdict) = match r.judged {
                Some((tol, ok)) => (format!("{tol:.0e}"), if ok { "ok" } else { "FAIL" }),
                None => (String::new(), "measured"),
            };
            out += &format!("| {} | {} | {tol} | {verdict} |\n", r.check, r.value);
        }
        out
    }

    /// The checks that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.rows.iter().filter(|r| matches!(r.judged, Some((_, false)))).map(|r| r.check.as_str()).collect()
    }
}
