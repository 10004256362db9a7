//! Training-op speed: a basic residual block (two 3×3×3 convs, 32 channels) forward + backward on
//! [2, 32, 16, 32, 32], the reference shape of the networks issue.
//!
//! 2026-11-30, 2-core EPYC: fwd + bwd 183–231 ms, fwd 44–59 ms (direct kernels; the im2col kernels
//! before them: 197 / 55 ms in the same session). PyTorch 2.15 (oneDNN, 2 threads), same block:
//! 147 / 32 ms. At 32 channels on 32×32 planes the direct weight gradient is no faster than im2col
//! (both ≈ 188 ms here): its loads come from L2. The demo network's shapes (16–80 channels on 24×24
//! and smaller) are where the direct kernels win; its whole training step is on par with PyTorch's
//! (`scripts/torch-step-compare`).

use autopath_models::ops::{conv3d, Conv3dParams};
use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};

fn basic_block(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 32, 16, 32, 32), &dev).unwrap()).unwrap();
    let w1 = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (32, 32, 3, 3, 3), &dev).unwrap() * 0.05).unwrap()).unwrap();
    let w2 = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (32, 32, 3, 3, 3), &dev).unwrap() * 0.05).unwrap()).unwrap();
    let p = Conv3dParams { padding: [1; 3], ..Default::default() };
    let mut g = c.benchmark_group("conv3d");
    g.sample_size(10);
    g.bench_function("basic_block_32ch_2x16x32x32_fwd_bwd", |b| {
        b.iter(|| {
            let h = conv3d(x.as_tensor(), w1.as_tensor(), p).unwrap().relu().unwrap();
            let y = (conv3d(&h, w2.as_tensor(), p).unwrap() + x.as_tensor()).unwrap().relu().unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            assert_eq!(grads.get(w1.as_tensor()).unwrap().dtype(), DType::F32);
        })
    });
    g.bench_function("basic_block_32ch_2x16x32x32_fwd", |b| {
        b.iter(|| {
            let h = conv3d(x.as_tensor(), w1.as_tensor(), p).unwrap().relu().unwrap();
            (conv3d(&h, w2.as_tensor(), p).unwrap() + x.as_tensor()).unwrap().relu().unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Numbers only: criterion's plots need a registered font, which a headless machine may lack.
    config = Criterion::default().without_plots();
    targets = basic_block
}
criterion_main!(benches);
