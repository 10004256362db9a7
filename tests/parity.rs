//! `autopath compile`'s parity checks on *trained* networks: briefly trained segmenters (the state in
//! which users stop early) compile, every segment of the bundle agrees with the f64 model within the
//! tolerance (ONNX Runtime and Candle f32 alike), and a bundle that differs from its model in one block
//! is refused with an error naming that block.

use std::path::{Path, PathBuf};
use std::process::Command;

use autopath::deploy::{SessionOptions, Sessions};
use autopath::study::compile::compile;
use autopath::study::compile::parity::{failure, verify, TOLERANCE};
use autopath::study::train::segment::{load_segmenter, Model, TrainConfig};
use autopath_models::spec::ArchSpec;

fn autopath(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap();
    assert!(out.status.success(), "autopath {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn train(data: &Path, out: &Path, arch: &str, width: &str, patch: &str, epochs: &str, drop_path: &str) -> PathBuf {
    let run = out.join(format!("{arch}-w{width}-{patch}-dp{drop_path}"));
    autopath(&[
        "train",
        "--quiet",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--arch",
        arch,
        "--width",
        width,
        "--patch",
        patch,
        "--epochs",
        epochs,
        "--batch",
        "2",
        "--lr",
        "0.01",
        "--val-every",
        "100",
        "--val-cases",
        "1",
        "--split",
        "0.2",
        "--drop-path",
        drop_path,
    ]);
    run
}

/// Largest |logit| on two training crops in training mode (batch statistics) and in evaluation mode
/// (running statistics).
fn logit_range(net: &autopath_models::deeplab::DeepLab3d, cfg: &TrainConfig) -> (f32, f32) {
    let ds = autopath::study::dataset::Dataset::open(&cfg.data, Some(cfg.layout)).unwrap();
    let cases = autopath::study::train::segment::cases_by_id(&ds, &cfg.train_ids).unwrap();
    let p = cfg.window.patch;
    let mut xs = Vec::new();
    for c in cases.iter().take(2) {
        let s = autopath::study::train::data::load_sample(c, &cfg.preprocessing).unwrap();
        let padded = autopath::input::window::pad_to_patch(s.image.clone(), p, s.record.pad_value);
        xs.extend(autopath::input::window::extract(&padded.view(), [0, 0, 0], p).iter().copied());
    }
    let x = candle_core::Tensor::from_vec(xs, (2, 1, p[0], p[1], p[2]), &candle_core::Device::Cpu).unwrap();
    let max = |train: bool| {
        let net = net.to_dtype(candle_core::DType::F32).unwrap(); // a copy: training mode updates statistics
        let l = net.forward(&x, autopath_models::deeplab::BlockPath::Full, train).unwrap();
        l.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    };
    (max(true), max(false))
}

#[test]
fn briefly_trained_segmenters_compile_with_every_segment_within_tolerance_of_the_f64_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    autopath(&[
        "synth",
        "--quiet",
        "--cases",
        "8",
        "--size",
        "32,64,64",
        "--seed",
        "7",
        "--out",
        data.to_str().unwrap(),
    ]);
    // Early stops with the default learning rate: the state whose lagging BatchNorm statistics made
    // evaluation-mode activations explode and parity fail before the statistics were recomputed.
    for (arch, width, patch, epochs, drop_path) in [
        ("r18", "8", "32,64,64", "6", "0.2"),
        ("r18", "8", "16,64,64", "4", "0"),
        ("r18", "4", "24,32,64", "3", "0.2"),
        ("r50", "4", "16,64,64", "3", "0"),
        ("r50", "4", "16,32,32", "2", "0.2"),
    ] {
        let run = train(&data, dir.path(), arch, width, patch, epochs, drop_path);
        let (net, cfg) = load_segmenter(&run, "best").unwrap();
        let out = dir.path().join(format!("bundle-{}", run.file_name().unwrap().to_string_lossy()));
        let report = compile(
            &net,
            &cfg,
            None,
            None,
            &out,
            autopath::study::compile::CompileOptions { verify: true, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{arch} w{width} {patch} {epochs} epochs drop-path {drop_path}: {e}"));
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        let n = net.blocks.len();
        // Every segment is checked on its own, then the compositions the runtime runs.
        assert_eq!(names[0], "stem");
        for b in 0..n {
            assert!(names.contains(&format!("block_{b:02}").as_str()), "{names:?}");
        }
        let shortcuts = net.blocks.iter().filter(|b| b.shortcut.is_some()).count();
        assert_eq!(names.iter().filter(|c| c.starts_with("shortcut_")).count(), shortcuts);
        for composed in ["head", "full.onnx", "chain, all blocks kept", "chain, odd blocks dropped"] {
            assert!(names.contains(&composed), "{names:?}");
        }
        for c in &report.checks {
            assert!(
                c.passed && c.max_rel <= TOLERANCE && c.candle_max_rel.is_none_or(|r| r <= TOLERANCE),
                "{arch} w{width} {patch} drop-path {drop_path}: {}",
                c.describe()
            );
        }
        assert!(out.join("manifest.json").is_file());
        // The cause, measured directly: evaluation mode stays in the range training saw (with lagging
        // statistics it was 2.0e3 against 3.7 for the second configuration).
        let (train, eval) = logit_range(&net, &cfg);
        assert!(
            eval <= 3.0 * train + 1.0,
            "{arch} w{width} {patch}: max |logit| {eval:.3e} in evaluation, {train:.3e} in training"
        );
    }
}

#[test]
fn a_bundle_that_differs_from_its_model_in_one_block_is_refused_naming_that_block() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ArchSpec::preset("r18", 8, [16, 32, 32]).unwrap();
    let model = Model::new(&spec, 4, &candle_core::Device::Cpu).unwrap();
    let cfg = TrainConfig::for_spec(spec);
    let out = dir.path().join("bundle");
    compile(
        &model.net,
        &cfg,
        None,
        None,
        &out,
        autopath::study::compile::CompileOptions { verify: false, ..Default::default() },
    )
    .unwrap();
    // The model changes after compiling: block 3's last BatchNorm scale is doubled.
    let name = format!("{}.bn2.weight", model.net.blocks[3].spec().name());
    let (_, var) = model.state().into_iter().find(|(n, _)| *n == name).unwrap();
    var.set(&(var.as_tensor() * 2.0).unwrap()).unwrap();
    let bundle = autopath_bundle::Bundle::load(&out).unwrap();
    let mut sessions = Sessions::open(&bundle, &SessionOptions::default()).unwrap();
    let checks = verify(&model.net, None, &mut sessions, (cfg.window.patch, autopath_bundle::Precision::Fp32)).unwrap();
    let first = checks.iter().find(|c| !c.passed).unwrap();
    assert_eq!(first.name, "block_03");
    // Candle agrees with its own f64 copy: the fault is charged to the graph, not to f32.
    assert!(first.candle_max_rel.unwrap() <= TOLERANCE && first.max_rel > 1e-2, "{}", first.describe());
    let message = failure(&checks).unwrap().to_string();
    assert!(message.contains("block_03") && message.contains("--no-verify"), "{message}");
    assert!(!message.contains("ill-conditioned"), "{message}");
}

/// Seeded, untrained ResNet-18 and -50 at width 4 with both decoders, for the rewrites' parity tests.
fn every_network() -> Vec<(String, Model, TrainConfig)> {
    use autopath_models::spec::DecoderKind;
    [("r18", DecoderKind::Skip), ("r18", DecoderKind::Paper), ("r50", DecoderKind::Skip), ("r50", DecoderKind::Paper)]
        .into_iter()
        .map(|(arch, decoder)| {
            let spec = ArchSpec { decoder, ..ArchSpec::preset(arch, 4, [16, 32, 32]).unwrap() };
            let model = Model::new(&spec, 7, &candle_core::Device::Cpu).unwrap();
            (format!("{arch}-{decoder:?}"), model, TrainConfig::for_spec(spec))
        })
        .collect()
}

/// `compile --stem space-to-depth` rewrites the stem exactly (up to the order of f32 sums): every graph
/// that holds the stem (stem.onnx, full.onnx, the chains) passes the parity checks against the f64
/// model, for ResNet-18 and -50 with both decoders; the manifest records the form; odd tiles are refused.
#[test]
fn the_space_to_depth_stem_passes_parity_for_every_network() {
    use autopath_bundle::StemForm;
    let dir = tempfile::tempdir().unwrap();
    for (name, model, cfg) in every_network() {
        let out = dir.path().join(&name);
        let opts = autopath::study::compile::CompileOptions {
            verify: true,
            stem: StemForm::SpaceToDepth,
            ..Default::default()
        };
        let report = compile(&model.net, &cfg, None, None, &out, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let checked: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        for graph in ["stem", "full.onnx", "chain, all blocks kept", "chain, odd blocks dropped"] {
            assert!(checked.contains(&graph), "{name}: {checked:?}");
        }
        for c in &report.checks {
            assert!(c.passed && c.max_rel <= TOLERANCE, "{name}: {}", c.describe());
        }
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["producer"]["stem"], "space-to-depth");
    }
    let spec = ArchSpec::preset("r18", 4, [15, 32, 32]).unwrap();
    let model = Model::new(&spec, 7, &candle_core::Device::Cpu).unwrap();
    let opts = autopath::study::compile::CompileOptions { stem: StemForm::SpaceToDepth, ..Default::default() };
    let e = compile(&model.net, &TrainConfig::for_spec(spec), None, None, &dir.path().join("odd"), opts).unwrap_err();
    assert!(e.to_string().contains("space-to-depth needs even tile sizes"), "{e}");
}

/// `compile --precision fp16`: every segment and composition of ResNet-18 and -50 with both decoders
/// lies within the fp16 limit of the f64 model, and further from it than f32 graphs may (the graphs
/// really compute in fp16); the policy-free bundle's manifest says fp16.
#[test]
fn fp16_graphs_pass_parity_for_every_network() {
    use autopath::study::compile::parity::FP16_TOLERANCE;
    use autopath_bundle::Precision;
    let dir = tempfile::tempdir().unwrap();
    for (name, model, cfg) in every_network() {
        let out = dir.path().join(&name);
        let opts = autopath::study::compile::CompileOptions { precision: Precision::Fp16, ..Default::default() };
        let report = compile(&model.net, &cfg, None, None, &out, opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        for c in &report.checks {
            assert!(c.passed && c.max_rel <= FP16_TOLERANCE && c.limit == FP16_TOLERANCE, "{name}: {}", c.describe());
        }
        let stem = report.checks.iter().find(|c| c.name == "stem").unwrap();
        assert!(stem.max_rel > TOLERANCE / 10.0, "{name}: the stem is as exact as f32: {}", stem.describe());
        let worst = report.checks.iter().map(|c| c.max_rel).fold(0.0, f64::max);
        eprintln!("{name}: fp16 graphs at most {worst:.2e} from the f64 model");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["producer"]["precision"], "fp16");
    }
}
