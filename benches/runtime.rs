//! Runtime hot paths on one tile: (a) `full.onnx`, (b) the chain with every block kept, (c) a
//! half-dropped path; the policy alone; preprocessing of a volume; and `full.onnx` on a batch of 4
//! tiles with native 3D convolutions against depth taps (`compile --conv3d`). The bundles are compiled
//! from a seeded random r18 (width 16, tile 32×96×96), so the numbers measure the graphs, not the
//! weights. Needs ONNX Runtime (`make setup`).

use autopath::deploy::{SessionOptions, Sessions};
use autopath::input::preprocess::Preprocess;
use autopath::input::preprocess::Preprocessing;
use autopath::input::volume::{Geometry, Volume};
use autopath::study::compile::compile;
use autopath::study::train::segment::{Model, TrainConfig};
use autopath_models::spec::ArchSpec;
use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{Array3, Array5};

fn bundle(dir: &std::path::Path, conv: autopath_bundle::Conv3dLayout) -> autopath_bundle::Bundle {
    let spec = ArchSpec::preset("r18", 16, [32, 96, 96]).expect("preset");
    let model = Model::new(&spec, 1, &candle_core::Device::Cpu).expect("model");
    let policy_vars = autopath_models::init::SeededVarMap::new(2);
    let policy = autopath_models::policy::PolicyNet::load(
        policy_vars.var_builder(candle_core::DType::F32, &candle_core::Device::Cpu),
        &spec,
    )
    .expect("policy");
    let cfg = TrainConfig::for_spec(spec);
    let p = autopath::study::compile::PolicyInput { net: &policy, threshold: 0.5, training: None };
    let out = dir.join("bundle");
    compile(
        &model.net,
        &cfg,
        Some(p),
        None,
        &out,
        autopath::study::compile::CompileOptions {
            verify: false,
            force: true,
            conv,
            split_head: false,
            path_graphs: 0,
            ..Default::default()
        },
    )
    .expect("compile");
    autopath_bundle::Bundle::load(&out).expect("bundle")
}

fn runtime(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = bundle(dir.path(), autopath_bundle::Conv3dLayout::Native);
    let mut s = Sessions::open(&b, &SessionOptions::default()).expect("sessions");
    let tile =
        Array5::from_shape_fn((1, 1, 32, 96, 96), |(_, _, z, y, x)| ((z * 31 + y * 7 + x) % 17) as f32 / 17.0 - 0.5);
    let all = vec![true; 8];
    let half: Vec<bool> = (0..8).map(|n| n % 2 == 0).collect();
    let mut g = c.benchmark_group("tile_32x96x96");
    g.sample_size(20);
    g.bench_function("a_full_onnx", |bch| bch.iter(|| s.run_full(tile.view()).expect("run")));
    g.bench_function("b_chain_all_kept", |bch| bch.iter(|| s.run_chain(tile.view(), &all).expect("run")));
    g.bench_function("c_chain_half_dropped", |bch| bch.iter(|| s.run_chain(tile.view(), &half).expect("run")));
    // The same path as one graph joined from the segments (the bundle has no path graphs); joined on
    // its first run, outside the timing.
    s.run_path_with(tile.view(), &half, |a| a.sum()).expect("join");
    g.bench_function("d_joined_half_dropped", |bch| {
        bch.iter(|| s.run_path_with(tile.view(), &half, |a| a.sum()).expect("run"))
    });
    let policy_in = Array5::from_elem((1, 1, 16, 48, 48), 0.1f32);
    g.bench_function("policy", |bch| bch.iter(|| s.run_policy(policy_in.view()).expect("run")));
    g.finish();

    // What path scoring runs: 4 tiles per call, both ways of writing the 3D convolutions.
    let tiles = Array5::from_shape_fn((4, 1, 32, 96, 96), |(b, _, z, y, x)| {
        ((b + z * 31 + y * 7 + x) % 17) as f32 / 17.0 - 0.5
    });
    let taps_dir = tempfile::tempdir().expect("tempdir");
    let taps = bundle(taps_dir.path(), autopath_bundle::Conv3dLayout::DepthTaps);
    let mut t = Sessions::open(&taps, &SessionOptions::default()).expect("sessions");
    let mut g = c.benchmark_group("full_onnx_4x32x96x96");
    g.sample_size(10);
    g.bench_function("native_conv3d", |bch| bch.iter(|| s.run_full(tiles.view()).expect("run")));
    g.bench_function("depth_taps", |bch| bch.iter(|| t.run_full(tiles.view()).expect("run")));
    g.finish();

    let shape = [48, 128, 128];
    let volume = Volume {
        data: Array3::from_shape_fn(shape, |(z, y, x)| ((z * 13 + y * 5 + x * 3) % 1200) as f32 - 400.0),
        geometry: Geometry::new(shape, [[0.8, 0., 0., 0.], [0., 0.8, 0., 0.], [0., 0., 2.5, 0.], [0., 0., 0., 1.]]),
    };
    let prep = Preprocessing::default();
    c.bench_function("preprocess_48x128x128", |bch| bch.iter(|| prep.image(&volume).expect("preprocess")));
}

/// Host work of a CT-sized volume (220×512×512, the demo's 32×96×96 tiles at 50 % overlap, 1300
/// tiles): blending every tile's prediction into the accumulator (a row of the window at a time, as
/// the runtime does), and the labels from the weighted sum. The network's output is stood in for by
/// one fixed tile.
fn host(c: &mut Criterion) {
    use autopath::input::window::{Accumulator, Blend, WindowConfig};
    let window = WindowConfig { patch: [32, 96, 96], overlap: 0.5, blend: Blend::Gaussian { sigma_scale: 0.125 } };
    let shape = [220, 512, 512];
    let origins = window.tiles(shape);
    let pred = ndarray::Array4::from_shape_fn((1, 32, 96, 96), |(_, z, y, x)| ((z * 7 + y * 3 + x) % 11) as f32 / 11.0);
    let mut g = c.benchmark_group("host_220x512x512");
    g.sample_size(10);
    g.bench_function("blend_1300_tiles_and_label", |bch| {
        bch.iter(|| {
            let mut acc = Accumulator::new(1, shape, &window);
            let tiles: Vec<_> = origins.iter().map(|&o| (o, pred.view())).collect();
            acc.add_tiles(&tiles);
            autopath::labels::from_accumulator(acc, shape, autopath_bundle::Activation::Sigmoid, 0.5)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Numbers only: criterion's plots need a registered font, which a headless machine may lack.
    config = Criterion::default().without_plots();
    targets = runtime, host
}
criterion_main!(benches);
