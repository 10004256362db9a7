//! The device-generic compositions (the path CUDA takes) against the CPU kernels, on the CPU: values
//! and both gradients within 1e-5 relative, for every convolution, pooling and resize shape the
//! networks use.

use autopath_models::deeplab::STEM_POOL;
use autopath_models::layers::{max_pool3d, resize_trilinear, resize_trilinear_composed, MaxPool3dParams};
use autopath_models::ops::generic::{conv3d_taps, max_pool3d_taps};
use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{Device, Tensor, Var};

fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(pseudo_random(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(f32::MIN_POSITIVE)
}

/// Output, input gradient and weight gradient of `sum(conv(x, w) · r)` for a fixed random `r`.
fn conv_with_grads(
    f: fn(&Tensor, &Tensor, Conv3dParams) -> candle_core::Result<Tensor>,
    x: &Tensor,
    w: &Tensor,
    p: Conv3dParams,
) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = f(xv.as_tensor(), wv.as_tensor(), p).unwrap();
    let r = tensor(y.dims(), 99);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (y, grads.get(xv.as_tensor()).unwrap().clone(), grads.get(wv.as_tensor()).unwrap().clone())
}

/// Every convolution of the networks: stem, 3×3×3 at stride 1, (1,2,2) and 2, ASPP dilations, 1×1×1
/// projections and the classifier.
#[test]
fn composed_conv3d_matches_the_cpu_kernel_with_gradients() {
    let p = |s: [usize; 3], pad: usize, dil: usize| Conv3dParams { stride: s, padding: [pad; 3], dilation: [dil; 3] };
    let cases: Vec<(&str, [usize; 5], [usize; 5], Conv3dParams)> = vec![
        ("stem 7³ stride 2", [2, 1, 12, 20, 18], [4, 1, 7, 7, 7], p([2; 3], 3, 1)),
        ("3³ stride 1", [2, 4, 6, 9, 8], [5, 4, 3, 3, 3], p([1; 3], 1, 1)),
        ("3³ stride (1,2,2)", [1, 4, 6, 10, 9], [6, 4, 3, 3, 3], p([1, 2, 2], 1, 1)),
        ("3³ stride 2", [2, 3, 7, 10, 10], [4, 3, 3, 3, 3], p([2; 3], 1, 1)),
        ("ASPP dilation 6", [1, 4, 5, 8, 8], [3, 4, 3, 3, 3], p([1; 3], 6, 6)),
        ("ASPP dilation 12", [1, 3, 4, 6, 7], [3, 3, 3, 3, 3], p([1; 3], 12, 12)),
        ("ASPP dilation 18", [1, 3, 4, 5, 5], [2, 3, 3, 3, 3], p([1; 3], 18, 18)),
        ("1³ projection stride (1,2,2)", [2, 4, 5, 8, 7], [8, 4, 1, 1, 1], p([1, 2, 2], 0, 1)),
        ("1³ stride 1", [2, 6, 3, 4, 5], [2, 6, 1, 1, 1], p([1; 3], 0, 1)),
    ];
    for (i, (name, xs, ws, params)) in cases.into_iter().enumerate() {
        let (x, w) = (tensor(&xs, 2 * i as u64), tensor(&ws, 2 * i as u64 + 1));
        let (y, gx, gw) = conv_with_grads(conv3d_taps, &x, &w, params);
        let (y0, gx0, gw0) = conv_with_grads(conv3d, &x, &w, params);
        for (what, a, b) in [("output", &y, &y0), ("input gradient", &gx, &gx0), ("weight gradient", &gw, &gw0)] {
            let e = rel(a, b);
            assert!(e <= 1e-5, "{name}: {what} differs by {e:.2e} relative");
        }
    }
}

#[test]
fn composed_max_pool_matches_the_cpu_kernel_with_gradients() {
    let cases = [
        ("stem pool", [2, 3, 7, 12, 11], STEM_POOL),
        (
            "2³ stride 2, no padding",
            [1, 2, 6, 8, 8],
            MaxPool3dParams { kernel: [2; 3], stride: [2; 3], padding: [0; 3] },
        ),
        (
            "(1,3,3) stride (1,2,2)",
            [1, 2, 4, 9, 9],
            MaxPool3dParams { kernel: [1, 3, 3], stride: [1, 2, 2], padding: [0, 1, 1] },
        ),
    ];
    for (i, (name, xs, p)) in cases.into_iter().enumerate() {
        // Continuous random values: no ties, where the two ops split gradients differently.
        let x = Var::from_tensor(&tensor(&xs, 40 + i as u64)).unwrap();
        let run = |f: fn(&Tensor, MaxPool3dParams) -> candle_core::Result<Tensor>| {
            let y = f(x.as_tensor(), p).unwrap();
            let r = tensor(y.dims(), 7);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let ((y, g), (y0, g0)) = (run(max_pool3d_taps), run(max_pool3d));
        assert_eq!(y.dims(), y0.dims(), "{name}");
        assert!(rel(&y, &y0) == 0.0, "{name}: pooled values differ");
        assert!(rel(&g, &g0) <= 1e-6, "{name}: gradients differ by {:.2e}", rel(&g, &g0));
    }
}

#[test]
fn composed_conv3d_refuses_what_it_cannot_express() {
    let (x, w) = (tensor(&[1, 2, 4, 6, 6], 1), tensor(&[2, 3, 3, 3, 3], 2));
    let err = conv3d_taps(&x, &w, Conv3dParams::default()).unwrap_err().to_string();
    assert!(err.contains("2 channels") && err.contains("expects 3"), "{err}");
    let w = tensor(&[2, 2, 3, 3, 3], 2);
    let uneven = Conv3dParams { stride: [1, 1, 2], ..Default::default() };
    let err = conv3d_taps(&x, &w, uneven).unwrap_err().to_string();
    assert!(err.contains("equal stride"), "{err}");
}

#[test]
fn composed_resize_matches_the_cpu_kernel_with_gradients() {
    let cases: [(&str, [usize; 5], [usize; 3]); 4] = [
        ("ASPP output to the skip level", [2, 5, 8, 3, 3], [8, 24, 24]),
        ("logits to the tile", [2, 1, 8, 24, 24], [32, 96, 96]),
        ("odd sizes, one axis kept", [1, 2, 5, 7, 4], [9, 7, 11]),
        ("shrinking and a size-1 axis", [1, 3, 1, 9, 12], [4, 5, 7]),
    ];
    for (i, (name, xs, size)) in cases.into_iter().enumerate() {
        let x = Var::from_tensor(&tensor(&xs, 60 + i as u64)).unwrap();
        let run = |f: fn(&Tensor, [usize; 3]) -> candle_core::Result<Tensor>| {
            let y = f(x.as_tensor(), size).unwrap();
            let r = tensor(y.dims(), 8);
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let ((y, g), (y0, g0)) = (run(resize_trilinear_composed), run(resize_trilinear));
        assert_eq!(y.dims(), y0.dims(), "{name}");
        assert!(rel(&y, &y0) <= 1e-6, "{name}: values differ by {:.2e}", rel(&y, &y0));
        assert!(rel(&g, &g0) <= 1e-5, "{name}: gradients differ by {:.2e}", rel(&g, &g0));
    }
}
