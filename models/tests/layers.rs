//! Layers against direct definitions and finite differences.

use autopath_models::layers::{max_pool3d, resize_trilinear, BatchNorm3d, ConvTranspose3d, MaxPool3dParams};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn finite_difference_check(x0: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) {
    let xv = Var::from_tensor(x0).unwrap();
    let y = f(xv.as_tensor());
    let r = Tensor::randn(0f64, 1.0, y.shape(), &Device::Cpu).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic = to_vec(g.get(xv.as_tensor()).unwrap());
    let base = to_vec(x0);
    let loss = |v: &[f64]| -> f64 {
        let t = Tensor::from_vec(v.to_vec(), x0.shape(), &Device::Cpu).unwrap();
        to_vec(&(f(&t) * &r).unwrap().sum_all().unwrap())[0]
    };
    let h = 1e-6;
    for j in (0..base.len()).step_by(3) {
        let (mut p, mut m) = (base.clone(), base.clone());
        p[j] += h;
        m[j] -= h;
        let fd = (loss(&p) - loss(&m)) / (2.0 * h);
        assert!((fd - analytic[j]).abs() < 1e-5 * (1.0 + fd.abs()), "element {j}: fd {fd} analytic {}", analytic[j]);
    }
}

#[test]
fn max_pool_matches_direct_definition_and_its_gradient() {
    let p = MaxPool3dParams { kernel: [3; 3], stride: [2; 3], padding: [1; 3] };
    // Distinct values so the maximum of each window is unique (finite differences need that).
    let n = 2 * 2 * 5 * 6 * 7;
    let vals: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64 * 0.01).collect();
    let x = Tensor::from_vec(vals.clone(), (2, 2, 5, 6, 7), &Device::Cpu).unwrap();
    let y = max_pool3d(&x, p).unwrap();
    assert_eq!(y.dims(), &[2, 2, 3, 3, 4]);
    let got = to_vec(&y);
    let mut i = 0;
    for plane in 0..4 {
        for z in 0..3 {
            for yy in 0..3 {
                for xx in 0..4 {
                    let mut best = f64::NEG_INFINITY;
                    for a in 0..3 {
                        for b in 0..3 {
                            for c in 0..3 {
                                let (iz, iy, ix) = (2 * z + a, 2 * yy + b, 2 * xx + c);
                                if iz >= 1 && iy >= 1 && ix >= 1 && iz <= 5 && iy <= 6 && ix <= 7 {
                                    best = best.max(vals[plane * 210 + ((iz - 1) * 6 + iy - 1) * 7 + ix - 1]);
                                }
                            }
                        }
                    }
                    assert_eq!(got[i], best);
                    i += 1;
                }
            }
        }
    }
    finite_difference_check(&x, &|t| max_pool3d(t, p).unwrap());
}

#[test]
fn transposed_conv_matches_direct_definition() {
    let vm = VarMap::new();
    let up = ConvTranspose3d::load(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu), 3, 2).unwrap();
    let x = Tensor::randn(0f64, 1.0, (2, 3, 2, 3, 4), &Device::Cpu).unwrap();
    let y = up.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 2, 4, 6, 8]);
    let (xv, wv, yv) = (to_vec(&x), to_vec(up.weight()), to_vec(&y));
    // y[n, o, 2d+a, 2h+b, 2w+c] = Σ_i x[n, i, d, h, w] · W[i, o, a, b, c]
    for n in 0..2 {
        for o in 0..2 {
            for z in 0..4 {
                for yy in 0..6 {
                    for xx in 0..8 {
                        let mut s = 0.0;
                        for i in 0..3 {
                            s += xv[(((n * 3 + i) * 2 + z / 2) * 3 + yy / 2) * 4 + xx / 2]
                                * wv[(((i * 2 + o) * 2 + z % 2) * 2 + yy % 2) * 2 + xx % 2];
                        }
                        let got = yv[(((n * 2 + o) * 4 + z) * 6 + yy) * 8 + xx];
                        assert!((got - s).abs() < 1e-12);
                    }
                }
            }
        }
    }
    finite_difference_check(&x, &|t| up.forward(t).unwrap());
}

#[test]
fn trilinear_resize_aligns_corners_and_is_exact_on_linear_functions() {
    // f = 2z + 3y − x is reproduced exactly by trilinear interpolation with aligned corners.
    let (d, h, w) = (3, 4, 5);
    let x = Tensor::from_vec(
        (0..d * h * w).map(|i| (2 * (i / 20) + 3 * ((i / 5) % 4)) as f64 - (i % 5) as f64).collect::<Vec<_>>(),
        (1, 1, d, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let y = resize_trilinear(&x, [5, 7, 9]).unwrap();
    let v = to_vec(&y);
    for z in 0..5 {
        for yy in 0..7 {
            for xx in 0..9 {
                let (sz, sy, sx) = (z as f64 * 2.0 / 4.0, yy as f64 * 3.0 / 6.0, xx as f64 * 4.0 / 8.0);
                let want = 2.0 * sz + 3.0 * sy - sx;
                assert!((v[(z * 7 + yy) * 9 + xx] - want).abs() < 1e-12);
            }
        }
    }
    finite_difference_check(&x, &|t| resize_trilinear(t, [4, 6, 3]).unwrap());
}

#[test]
fn batchnorm_normalises_in_training_and_tracks_running_statistics() {
    let vm = VarMap::new();
    let bn = BatchNorm3d::load(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu), 2).unwrap();
    let x = Tensor::randn(5f64, 3.0, (4, 2, 3, 3, 3), &Device::Cpu).unwrap();
    let y = bn.forward(&x, true).unwrap();
    for c in 0..2 {
        let v = to_vec(&y.narrow(1, c, 1).unwrap());
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 1e-10 && (var - 1.0).abs() < 1e-3, "channel {c}: mean {mean} var {var}");
        let xc = to_vec(&x.narrow(1, c, 1).unwrap());
        let xm = xc.iter().sum::<f64>() / xc.len() as f64;
        let xvar = xc.iter().map(|a| (a - xm).powi(2)).sum::<f64>() / (xc.len() - 1) as f64;
        let (rm, rv) = bn.running_stats();
        assert!((to_vec(rm)[c] - 0.1 * xm).abs() < 1e-10);
        assert!((to_vec(rv)[c] - (0.9 + 0.1 * xvar)).abs() < 1e-10);
    }
    // Evaluation uses the running statistics, not the batch.
    let e = to_vec(&bn.forward(&x, false).unwrap());
    let (rm, rv) = (to_vec(bn.running_stats().0), to_vec(bn.running_stats().1));
    let xv = to_vec(&x);
    assert!((e[0] - (xv[0] - rm[0]) / (rv[0] + 1e-5).sqrt()).abs() < 1e-10);
    finite_difference_check(&x, &|t| bn.forward(t, false).unwrap());
}

/// Gradients of `Σ r·f(x)` with respect to x, gamma and beta.
fn bn_gradients(bn: &BatchNorm3d, x: &Var, r: &Tensor, f: &dyn Fn(&Tensor) -> Tensor) -> Vec<Vec<f64>> {
    let g = (f(x.as_tensor()) * r).unwrap().sum_all().unwrap().backward().unwrap();
    [x.as_tensor(), bn.gamma(), bn.beta()].iter().map(|t| to_vec(g.get(t).unwrap())).collect()
}

#[test]
fn fused_batchnorm_relu_equals_the_composed_definition_with_gradients() {
    for train in [true, false] {
        for relu in [false, true] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
            let bn = BatchNorm3d::load(vb.clone(), 3).unwrap();
            // Non-trivial affine and running statistics so every term of the gradient matters.
            for (name, t) in vm.data().lock().unwrap().iter() {
                let v = Tensor::randn(0.5f64, 0.4, 3, &Device::Cpu).unwrap();
                t.set(&if name.contains("bias") { v } else { v.abs().unwrap() }).unwrap();
            }
            bn.forward_composed(&Tensor::randn(1f64, 2.0, (2, 3, 2, 3, 4), &Device::Cpu).unwrap(), true).unwrap();
            let x = Var::from_tensor(&Tensor::randn(1f64, 2.0, (2, 3, 3, 4, 5), &Device::Cpu).unwrap()).unwrap();
            let r = Tensor::randn(0f64, 1.0, x.shape(), &Device::Cpu).unwrap();
            let stats_before = (to_vec(bn.running_stats().0), to_vec(bn.running_stats().1));

            let reference = |t: &Tensor| {
                let y = bn.forward_composed(t, train).unwrap();
                if relu {
                    y.relu().unwrap()
                } else {
                    y
                }
            };
            let fused =
                |t: &Tensor| if relu { bn.forward_relu(t, train).unwrap() } else { bn.forward(t, train).unwrap() };
            let (want, got) = (to_vec(&reference(x.as_tensor())), to_vec(&fused(x.as_tensor())));
            let max_err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(max_err < 1e-12, "train {train} relu {relu}: outputs differ by {max_err}");
            if train {
                // The composed and the fused call each moved the running estimates by this batch:
                // m = 0.9·(0.9·m0 + 0.1·mean) + 0.1·mean, likewise the unbiased variance.
                let (m, v) = (to_vec(bn.running_stats().0), to_vec(bn.running_stats().1));
                for c in 0..3 {
                    let xc = to_vec(&x.as_tensor().narrow(1, c, 1).unwrap());
                    let mean = xc.iter().sum::<f64>() / xc.len() as f64;
                    let var = xc.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (xc.len() - 1) as f64;
                    assert!((m[c] - (0.81 * stats_before.0[c] + 0.19 * mean)).abs() < 1e-12);
                    assert!((v[c] - (0.81 * stats_before.1[c] + 0.19 * var)).abs() < 1e-12);
                }
            }
            let (gw, gf) = (bn_gradients(&bn, &x, &r, &reference), bn_gradients(&bn, &x, &r, &fused));
            for (which, (a, b)) in ["x", "gamma", "beta"].iter().zip(gw.iter().zip(&gf)) {
                let err = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
                assert!(err < 1e-10, "train {train} relu {relu}: d{which} differs by {err}");
            }
        }
    }
    // Training mode against finite differences too (the batch statistics depend on x).
    let vm = VarMap::new();
    let bn = BatchNorm3d::load(VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu), 2).unwrap();
    let x = Tensor::randn(0f64, 1.0, (2, 2, 2, 3, 3), &Device::Cpu).unwrap();
    finite_difference_check(&x, &|t| bn.forward_relu(t, true).unwrap());
}
