//! Gradients through the vendored candle-core's backward pass (`vendor/`), which stores a tensor's
//! first gradient contribution as is instead of adding it to a fresh zeros tensor: every way a
//! contribution arrives (first, added to an earlier one, subtracted, through a custom op, into a
//! tensor used twice) against gradients written out by hand.

use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn var(len: usize, seed: u32) -> Var {
    Var::from_vec(values(len, seed), len, &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

#[test]
fn contributions_from_several_uses_add_up_and_subtractions_negate() {
    let (a, b) = (var(64, 1), var(64, 2));
    // y = Σ ((a + a)·b − a − (b − a)·a): ∂y/∂a = 2b − 1 − b + 2a, ∂y/∂b = 2a − a.
    let aa = (a.as_tensor() + a.as_tensor()).unwrap();
    let t = ((aa * b.as_tensor()).unwrap() - a.as_tensor()).unwrap();
    let u = ((b.as_tensor() - a.as_tensor()).unwrap() * a.as_tensor()).unwrap();
    let grads = (t - u).unwrap().sum_all().unwrap().backward().unwrap();
    let (av, bv) = (vec(a.as_tensor()), vec(b.as_tensor()));
    let want_a: Vec<f32> = av.iter().zip(&bv).map(|(a, b)| 2.0 * b - 1.0 - b + 2.0 * a).collect();
    let want_b: Vec<f32> = av.iter().map(|a| 2.0 * a - a).collect();
    for (got, want) in [(vec(grads.get(&a).unwrap()), want_a), (vec(grads.get(&b).unwrap()), want_b)] {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5, "gradient {g}, by hand {w}");
        }
    }
}

#[test]
fn a_tensor_with_one_use_gets_its_only_contribution_and_a_negated_one() {
    let (a, b) = (var(16, 3), var(16, 4));
    // y = Σ (b − 3a): ∂y/∂a = −3 from one subtraction, ∂y/∂b = 1 from one use.
    let grads = (b.as_tensor() - (a.as_tensor() * 3.0).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(vec(grads.get(&a).unwrap()).iter().all(|&g| g == -3.0));
    assert!(vec(grads.get(&b).unwrap()).iter().all(|&g| g == 1.0));
}

#[test]
fn a_residual_connection_gets_the_convolution_gradient_plus_the_identity() {
    // y = Σ (conv(x, w) + x)·r with a 1×1×1 convolution of one channel and weight k: ∂y/∂x = (k + 1)·r.
    let shape = [1, 1, 2, 3, 4];
    let x = Var::from_tensor(&Tensor::from_vec(values(24, 5), &shape, &Device::Cpu).unwrap()).unwrap();
    let k = 0.75f32;
    let w = Var::from_tensor(&Tensor::from_vec(vec![k], &[1, 1, 1, 1, 1], &Device::Cpu).unwrap()).unwrap();
    let r = Tensor::from_vec(values(24, 6), &shape, &Device::Cpu).unwrap();
    let p = Conv3dParams { padding: [0; 3], stride: [1; 3], dilation: [1; 3] };
    let y = (conv3d(x.as_tensor(), w.as_tensor(), p).unwrap() + x.as_tensor()).unwrap();
    let grads = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = grads.get(&x).unwrap().flatten_all().unwrap();
    for (g, r) in vec(&gx).iter().zip(vec(&r.flatten_all().unwrap())) {
        assert!((g - (k + 1.0) * r).abs() <= 1e-6, "gradient {g}, by hand {}", (k + 1.0) * r);
    }
    // ∂y/∂k = Σ x·r.
    let want: f32 =
        vec(&x.as_tensor().flatten_all().unwrap()).iter().zip(vec(&r.flatten_all().unwrap())).map(|(x, r)| x * r).sum();
    let got = grads.get(&w).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "weight gradient {got}, by hand {want}");
}

#[test]
fn a_gradient_stored_as_is_is_not_changed_by_later_contributions_to_another_tensor() {
    // z = a + b hands the same gradient tensor to a and b; a's second use (·c) must then build a new
    // tensor, leaving b's gradient at 1.
    let (a, b, c) = (var(8, 7), var(8, 8), var(8, 9));
    let z = (a.as_tensor() + b.as_tensor()).unwrap();
    let y = (z.sum_all().unwrap() + (a.as_tensor() * c.as_tensor()).unwrap().sum_all().unwrap()).unwrap();
    let grads = y.backward().unwrap();
    assert!(vec(grads.get(&b).unwrap()).iter().all(|&g| g == 1.0));
    let want: Vec<f32> = vec(c.as_tensor()).iter().map(|c| 1.0 + c).collect();
    assert_eq!(vec(grads.get(&a).unwrap()), want);
}
