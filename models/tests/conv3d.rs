//! conv3d against an independent naive float64 loop (forward) and central finite differences
//! (gradients), on shapes that cover stride (1,2,2), dilation, 1×1×1, the 7×7×7 stem, odd sizes and
//! dilations larger than the map (taps that read only padding).

use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{DType, Device, Tensor, Var};

/// Direct definition of the convolution, one output at a time.
fn naive(x: &[f64], xs: [usize; 5], w: &[f64], ws: [usize; 5], p: Conv3dParams) -> (Vec<f64>, [usize; 5]) {
    let [n, ci, d, h, wd] = xs;
    let [co, _, kd, kh, kw] = ws;
    let o = p.out_dims([d, h, wd], [kd, kh, kw]).unwrap();
    let mut y = vec![0.0; n * co * o[0] * o[1] * o[2]];
    let mut idx = 0;
    for b in 0..n {
        for c in 0..co {
            for z in 0..o[0] {
                for yy in 0..o[1] {
                    for xx in 0..o[2] {
                        let mut acc = 0.0;
                        for k in 0..ci {
                            for a in 0..kd {
                                for bb in 0..kh {
                                    for cc in 0..kw {
                                        let iz = (z * p.stride[0] + a * p.dilation[0]) as isize - p.padding[0] as isize;
                                        let iy =
                                            (yy * p.stride[1] + bb * p.dilation[1]) as isize - p.padding[1] as isize;
                                        let ix =
                                            (xx * p.stride[2] + cc * p.dilation[2]) as isize - p.padding[2] as isize;
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= d as isize
                                            || iy >= h as isize
                                            || ix >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xi =
                                            (((b * ci + k) * d + iz as usize) * h + iy as usize) * wd + ix as usize;
                                        let wi = (((c * ci + k) * kd + a) * kh + bb) * kw + cc;
                                        acc += x[xi] * w[wi];
                                    }
                                }
                            }
                        }
                        y[idx] = acc;
                        idx += 1;
                    }
                }
            }
        }
    }
    (y, [n, co, o[0], o[1], o[2]])
}

fn pseudo_random(len: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

struct Case {
    x: [usize; 5],
    w: [usize; 5],
    p: Conv3dParams,
}

fn p(stride: [usize; 3], padding: [usize; 3], dilation: [usize; 3]) -> Conv3dParams {
    Conv3dParams { stride, padding, dilation }
}

fn cases() -> Vec<Case> {
    vec![
        // Basic block conv.
        Case { x: [2, 3, 5, 6, 7], w: [4, 3, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        // Stage transition: stride (1,2,2), odd H/W.
        Case { x: [2, 3, 4, 7, 9], w: [5, 3, 3, 3, 3], p: p([1, 2, 2], [1; 3], [1; 3]) },
        // Projection shortcut: 1×1×1 stride (1,2,2).
        Case { x: [1, 4, 3, 7, 6], w: [6, 4, 1, 1, 1], p: p([1, 2, 2], [0; 3], [1; 3]) },
        // Pointwise (fast path).
        Case { x: [2, 5, 3, 4, 5], w: [3, 5, 1, 1, 1], p: Conv3dParams::default() },
        // ASPP: dilation = padding.
        Case { x: [1, 2, 5, 8, 8], w: [3, 2, 3, 3, 3], p: p([1; 3], [2; 3], [2; 3]) },
        // Stem: 7×7×7, stride 2, pad 3, odd sizes.
        Case { x: [1, 1, 9, 11, 13], w: [2, 1, 7, 7, 7], p: p([2; 3], [3; 3], [1; 3]) },
        // Anisotropic kernel, padding and stride.
        Case { x: [1, 2, 6, 5, 9], w: [2, 2, 1, 3, 5], p: p([2, 1, 3], [0, 1, 2], [1, 2, 1]) },
        // Many output positions (more than one tile of 512).
        Case { x: [1, 2, 8, 20, 20], w: [3, 2, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        // ASPP on a map smaller than its dilation: in H and W only the centre tap reads the input.
        Case { x: [1, 2, 5, 3, 3], w: [3, 2, 3, 3, 3], p: p([1; 3], [4; 3], [4; 3]) },
        // Dead taps on one axis, live ones on the others, unequal dilations.
        Case { x: [2, 2, 4, 2, 6], w: [2, 2, 3, 3, 3], p: p([1; 3], [3, 3, 1], [3, 3, 1]) },
    ]
}

#[test]
fn forward_matches_naive_float64_loop() {
    for (i, c) in cases().iter().enumerate() {
        let x = pseudo_random(c.x.iter().product(), 2 * i as u64);
        let w = pseudo_random(c.w.iter().product(), 2 * i as u64 + 1);
        let (want, shape) = naive(&x, c.x, &w, c.w, c.p);
        for dtype in [DType::F64, DType::F32] {
            let xt = Tensor::from_vec(x.clone(), &c.x[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let wt = Tensor::from_vec(w.clone(), &c.w[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let y = conv3d(&xt, &wt, c.p).unwrap();
            assert_eq!(y.dims(), &shape[..], "case {i}");
            let got: Vec<f64> = y.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let err = got.iter().zip(&want).fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-4 };
            assert!(err <= tol * scale, "case {i} {dtype:?}: max error {err} (scale {scale})");
        }
    }
}

#[test]
fn gradients_match_central_finite_differences() {
    for (i, c) in cases().iter().enumerate().filter(|(i, _)| *i != 7) {
        let x0 = pseudo_random(c.x.iter().product(), 100 + i as u64);
        let w0 = pseudo_random(c.w.iter().product(), 200 + i as u64);
        // Loss = Σ y ⊙ r with a fixed random r, so every output position matters differently.
        let (_, ys) = naive(&x0, c.x, &w0, c.w, c.p);
        let r = pseudo_random(ys.iter().product(), 300 + i as u64);
        let loss =
            |x: &[f64], w: &[f64]| -> f64 { naive(x, c.x, w, c.w, c.p).0.iter().zip(&r).map(|(a, b)| a * b).sum() };

        let xv = Var::from_vec(x0.clone(), &c.x[..], &Device::Cpu).unwrap();
        let wv = Var::from_vec(w0.clone(), &c.w[..], &Device::Cpu).unwrap();
        let rt = Tensor::from_vec(r.clone(), &ys[..], &Device::Cpu).unwrap();
        let y = conv3d(xv.as_tensor(), wv.as_tensor(), c.p).unwrap();
        let grads = (y * rt).unwrap().sum_all().unwrap().backward().unwrap();
        let gx: Vec<f64> = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let gw: Vec<f64> = grads.get(wv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();

        let h = 1e-5;
        let check = |which: &str, base: &[f64], analytic: &[f64], f: &dyn Fn(&[f64]) -> f64| {
            // Every 7th element keeps the test fast while touching borders and interior.
            for j in (0..base.len()).step_by(7) {
                let mut plus = base.to_vec();
                plus[j] += h;
                let mut minus = base.to_vec();
                minus[j] -= h;
                let fd = (f(&plus) - f(&minus)) / (2.0 * h);
                assert!(
                    (fd - analytic[j]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "case {i} d{which}[{j}]: finite difference {fd}, analytic {}",
                    analytic[j]
                );
            }
        };
        check("x", &x0, &gx, &|x| loss(x, &w0));
        check("w", &w0, &gw, &|w| loss(&x0, w));
    }
}

#[test]
fn mismatched_or_impossible_shapes_are_errors() {
    let x = Tensor::zeros((1, 3, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv3d(&x, &w, Conv3dParams::default()).unwrap_err().to_string().contains("channels"));
    let w = Tensor::zeros((2, 3, 7, 7, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(conv3d(&x, &w, Conv3dParams::default()).unwrap_err().to_string().contains("does not fit"));
    let x4 = Tensor::zeros((3, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(conv3d(&x4, &w, Conv3dParams::default()).unwrap_err().to_string().contains("5D"));
}

/// Shapes for the direct f32 kernels (AVX2 + FMA machines; elsewhere they run through im2col and the
/// test still holds): output channels not a multiple of its block of 4, rows longer
/// than one register tile, dilation, an anisotropic kernel and padding, one input channel, strides.
fn direct_cases() -> Vec<Case> {
    vec![
        Case { x: [2, 3, 4, 20, 21], w: [6, 3, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        Case { x: [1, 5, 6, 18, 37], w: [3, 5, 3, 3, 3], p: p([1; 3], [2; 3], [2; 3]) },
        Case { x: [1, 2, 5, 16, 40], w: [5, 2, 1, 3, 5], p: p([1; 3], [0, 1, 2], [1; 3]) },
        Case { x: [2, 1, 3, 17, 17], w: [4, 1, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        // Strided convolutions through the phase rewrite: the stem (7×7×7, stride 2) and a stage
        // transition (stride (1, 2, 2)) on odd sizes.
        Case { x: [1, 1, 10, 30, 35], w: [4, 1, 7, 7, 7], p: p([2; 3], [3; 3], [1; 3]) },
        Case { x: [2, 3, 4, 27, 29], w: [5, 3, 3, 3, 3], p: p([1, 2, 2], [1; 3], [1; 3]) },
        // Small planes with 64 output channels, the channel-vectorised tiles: a deep-stage block (its
        // input gradient as well), a stage transition (the phase rewrite's zero taps, packed both
        // ways), and a few input channels.
        Case { x: [2, 64, 4, 3, 3], w: [64, 64, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        Case { x: [1, 32, 3, 10, 9], w: [64, 32, 3, 3, 3], p: p([1, 2, 2], [1; 3], [1; 3]) },
        Case { x: [1, 5, 3, 4, 5], w: [64, 5, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        Case { x: [2, 128, 8, 3, 3], w: [64, 128, 3, 3, 3], p: p([1; 3], [6; 3], [6; 3]) },
        Case { x: [2, 128, 4, 3, 3], w: [128, 128, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        // The demo network's 16- and 32-channel shapes (and 48): the stem with its zero phase taps
        // left out, a block of 1680 positions, a stage transition.
        Case { x: [1, 1, 10, 30, 35], w: [16, 1, 7, 7, 7], p: p([2; 3], [3; 3], [1; 3]) },
        Case { x: [1, 3, 4, 20, 21], w: [16, 3, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
        Case { x: [2, 16, 3, 12, 11], w: [32, 16, 3, 3, 3], p: p([1, 2, 2], [1; 3], [1; 3]) },
        Case { x: [1, 4, 3, 9, 10], w: [48, 4, 3, 3, 3], p: p([1; 3], [1; 3], [1; 3]) },
    ]
}

#[test]
fn direct_kernel_shapes_match_naive_float64_loop() {
    for (i, c) in direct_cases().iter().enumerate() {
        let x = pseudo_random(c.x.iter().product(), 50 + i as u64);
        let w = pseudo_random(c.w.iter().product(), 60 + i as u64);
        let (want, shape) = naive(&x, c.x, &w, c.w, c.p);
        let xt = Tensor::from_vec(x, &c.x[..], &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let wt = Tensor::from_vec(w, &c.w[..], &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let y = conv3d(&xt, &wt, c.p).unwrap();
        assert_eq!(y.dims(), &shape[..], "case {i}");
        let got: Vec<f64> = y.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        let err = got.iter().zip(&want).fold(0.0f64, |a, (g, w)| a.max((g - w).abs()));
        assert!(err <= 1e-5 * scale, "case {i}: max error {err} (scale {scale})");
    }
}

/// The f32 backward (whose input gradient runs through the direct kernel where it applies) against the
/// f64 backward (im2col only, itself checked against finite differences above).
#[test]
fn float32_gradients_match_float64_gradients() {
    for (i, c) in direct_cases().iter().chain(&cases()).enumerate() {
        let x = pseudo_random(c.x.iter().product(), 400 + i as u64);
        let w = pseudo_random(c.w.iter().product(), 500 + i as u64);
        let grads = |dtype: DType| -> (Vec<f64>, Vec<f64>) {
            let xv = Var::from_tensor(
                &Tensor::from_vec(x.clone(), &c.x[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let wv = Var::from_tensor(
                &Tensor::from_vec(w.clone(), &c.w[..], &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let y = conv3d(xv.as_tensor(), wv.as_tensor(), c.p).unwrap();
            let r = Tensor::from_vec(pseudo_random(y.elem_count(), 600 + i as u64), y.dims(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| -> Vec<f64> {
                g.get(t).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            };
            (flat(xv.as_tensor()), flat(wv.as_tensor()))
        };
        let (gx32, gw32) = grads(DType::F32);
        let (gx64, gw64) = grads(DType::F64);
        for (which, a, b) in [("x", &gx32, &gx64), ("w", &gw32, &gw64)] {
            let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b).fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
            assert!(err <= 1e-5 * scale, "case {i} d{which}: max error {err} (scale {scale})");
        }
    }
}
