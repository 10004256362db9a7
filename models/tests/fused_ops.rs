//! The fused residual join and sigmoid loss against their definitions and Candle's autograd.

use autopath_models::loss::segmentation_loss;
use autopath_models::ops::bce_dice::bce_dice;
use autopath_models::ops::residual::add_relu;
use autopath_models::spec::Output;
use candle_core::{DType, Device, Tensor, Var};

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
}

#[test]
fn residual_join_gives_candles_bits_forward_and_backward() {
    let dev = Device::Cpu;
    // Whole numbers: many sums are exactly zero, where ReLU's gradient convention (pass at 0) shows.
    let a = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, 4, 5, 70), &dev).unwrap().round().unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f32, 2.0, (2, 3, 4, 5, 70), &dev).unwrap().round().unwrap()).unwrap();
    let zeros = to_vec(&(a.as_tensor() + b.as_tensor()).unwrap()).iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 100, "only {zeros} exact zeros");
    let r = Tensor::randn(0f32, 1.0, a.shape(), &dev).unwrap();
    let fused = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    let composed = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    };
    assert_eq!(bits(&fused), bits(&composed));
    let gf = (fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gc = (composed * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for v in [&a, &b] {
        assert_eq!(bits(gf.get(v.as_tensor()).unwrap()), bits(gc.get(v.as_tensor()).unwrap()));
    }
    let wrong = Tensor::zeros((2, 3, 4, 5, 69), DType::F32, &dev).unwrap();
    let err = add_relu(a.as_tensor(), &wrong).unwrap_err().to_string();
    assert!(err.contains("shapes differ"), "{err}");
}

/// The loss written out voxel by voxel: mean BCE with logits plus 1 − mean Dice over σ(x).
fn definition(x: &[f64], y: &[f64], samples: usize) -> f64 {
    let v = x.len() / samples;
    let bce: f64 = x.iter().zip(y).map(|(&x, &y)| -(y * sigmoid(x).ln() + (1.0 - y) * (1.0 - sigmoid(x)).ln())).sum();
    let dice: f64 = (0..samples)
        .map(|s| {
            let (xs, ys) = (&x[s * v..(s + 1) * v], &y[s * v..(s + 1) * v]);
            let inter: f64 = xs.iter().zip(ys).map(|(&x, &y)| sigmoid(x) * y).sum();
            let total: f64 = xs.iter().map(|&x| sigmoid(x)).sum::<f64>() + ys.iter().sum::<f64>();
            (2.0 * inter + 1.0) / (total + 1.0)
        })
        .sum();
    bce / x.len() as f64 + 1.0 - dice / samples as f64
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Candle's composed loss (what CUDA runs), differentiated by Candle's autograd.
fn composed(x: &Tensor, y: &Tensor) -> Tensor {
    let bce = ((x.relu().unwrap() - (x * y).unwrap()).unwrap()
        + (x.abs().unwrap().neg().unwrap().exp().unwrap() + 1.0).unwrap().log().unwrap())
    .unwrap()
    .mean_all()
    .unwrap();
    let p = candle_nn::ops::sigmoid(x).unwrap();
    (bce + autopath_models::loss::soft_dice_loss(&p, y).unwrap()).unwrap()
}

#[test]
fn fused_sigmoid_loss_matches_its_definition_and_candles_gradient() {
    let dev = Device::Cpu;
    // Three samples of 40 000 voxels: several parallel chunks per sample, a partial last one.
    let (samples, voxels) = (3, 40_000);
    let x = Tensor::randn(0f64, 3.0, (samples, voxels), &dev).unwrap();
    let y = Tensor::rand(0f64, 1.0, (samples, voxels), &dev).unwrap().ge(0.7).unwrap().to_dtype(DType::F64).unwrap();
    let want = definition(&to_vec(&x), &to_vec(&y), samples);
    let xv = Var::from_tensor(&x).unwrap();
    let fused = bce_dice(xv.as_tensor(), &y).unwrap();
    assert_eq!(fused.dims(), &[] as &[usize]);
    let got = fused.to_scalar::<f64>().unwrap();
    assert!((got - want).abs() < 1e-12, "fused {got} definition {want}");

    // Gradient (scaled by an upstream 0.7) against Candle's autograd of the composed loss.
    let gf = (fused * 0.7).unwrap().backward().unwrap();
    let gc = (composed(xv.as_tensor(), &y) * 0.7).unwrap().backward().unwrap();
    let (gf, gc) = (to_vec(gf.get(xv.as_tensor()).unwrap()), to_vec(gc.get(xv.as_tensor()).unwrap()));
    let scale = gc.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0 && max_diff(&gf, &gc) < 1e-10 * scale,
        "gradients differ by {} (largest {scale})",
        max_diff(&gf, &gc)
    );

    // f32 follows f64 to single precision, and the result does not depend on the chunking's threads.
    let (x32, y32) = (x.to_dtype(DType::F32).unwrap(), y.to_dtype(DType::F32).unwrap());
    let l32 = bce_dice(&x32, &y32).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((l32 - want).abs() < 1e-5 * want, "f32 {l32} f64 {want}");
    let again = bce_dice(&x32, &y32).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert_eq!(l32.to_bits(), again.to_bits());
}

#[test]
fn segmentation_loss_takes_the_fused_path_with_the_same_value() {
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 2.0, (2, 1, 4, 6, 6), &dev).unwrap();
    let target = Tensor::rand(0f32, 1.0, (2, 4, 6, 6), &dev).unwrap().ge(0.5).unwrap();
    let got = segmentation_loss(&logits, &target, Output::Sigmoid).unwrap().to_scalar::<f32>().unwrap();
    let y = target.to_dtype(DType::F32).unwrap().reshape((2, 144)).unwrap();
    let want = composed(&logits.reshape((2, 144)).unwrap(), &y).to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-6, "segmentation_loss {got} composed {want}");
}

#[test]
fn fused_loss_refuses_mismatched_operands() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 10), DType::F32, &dev).unwrap();
    for y in [Tensor::zeros((2, 9), DType::F32, &dev).unwrap(), Tensor::zeros((2, 10), DType::F64, &dev).unwrap()] {
        let err = bce_dice(&x, &y).unwrap_err().to_string();
        assert!(err.contains("must match"), "{err}");
    }
}
