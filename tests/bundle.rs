//! `autopath compile` and `autopath-run`: graphs the official checker accepts, parity with Candle for
//! every dropped block, tamper detection, and runtime outputs identical to the Candle predictions.

mod common;

use std::path::Path;
use std::process::Command;

use autopath::deploy::{SessionOptions, Sessions};
use autopath::study::compile::compile;
use autopath::study::train::segment::{Model, TrainConfig};
use autopath_models::deeplab::BlockPath;
use autopath_models::spec::{ArchSpec, DecoderKind};
use candle_core::{Device, Tensor};
use ndarray::Array5;

fn config(spec: ArchSpec) -> TrainConfig {
    TrainConfig::for_spec(spec)
}

/// A randomly initialised model whose BatchNorm statistics and affine parameters are not the
/// identity, so that folding is exercised.
fn random_model(name: &str, seed: u64, decoder: DecoderKind) -> Model {
    let spec = ArchSpec { decoder, ..ArchSpec::preset(name, 8, [16, 32, 32]).unwrap() };
    let model = Model::new(&spec, seed, &candle_core::Device::Cpu).unwrap();
    for (i, (n, v)) in model.state().into_iter().enumerate() {
        let t = v.as_tensor();
        let r = Tensor::rand(0.5f32, 1.5, t.shape(), &Device::Cpu).unwrap();
        // Scales gamma/sqrt(var) in [0.35, 1]: activations stay in the range trained networks have.
        let new = if n.ends_with("running_var") {
            (r + 0.5).unwrap()
        } else if n.ends_with(".weight") && n.contains("bn") {
            (r * 0.5).unwrap()
        } else if n.ends_with("running_mean") || n.ends_with(".bias") && n.contains("bn") {
            ((r - 1.0).unwrap() * (0.2 * (1.0 + (i % 3) as f64))).unwrap()
        } else {
            continue;
        };
        v.set(&new).unwrap();
    }
    model
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().map(|v| v.abs() as f64).fold(1e-6, f64::max);
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
}

/// For both decoders: with the skip decoder, dropping a block of stage 0 also changes the head's
/// second input, so every dropped block is compared with Candle. Both ways of writing 3D
/// convolutions (depth taps: basic and bottleneck blocks, dilated stages, both heads).
#[test]
fn every_graph_passes_the_onnx_checker_and_dropping_each_block_matches_candle() {
    use autopath_bundle::Conv3dLayout::{DepthTaps, Native};
    use DecoderKind::{Paper, Skip};
    for (name, seed, decoder, conv) in [
        ("r18", 1, Paper, Native),
        ("r50", 2, Paper, Native),
        ("r18", 4, Skip, Native),
        ("r50", 5, Skip, Native),
        ("r18", 6, Skip, DepthTaps),
        ("r50", 7, Paper, DepthTaps),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = random_model(name, seed, decoder);
        let name = format!("{name} {decoder:?} {conv:?}");
        let cfg = config(model.net.spec().clone());
        let out = dir.path().join("bundle");
        let report = compile(
            &model.net,
            &cfg,
            None,
            None,
            &out,
            autopath::study::compile::CompileOptions { verify: true, conv, split_head: true, ..Default::default() },
        )
        .unwrap();
        // The head splits at the skip decoder's low-level part where it is written with depth taps.
        let split = conv == DepthTaps && decoder == Skip;
        let split_checked = report.checks.iter().any(|c| c.name == "head_low + head_rest");
        assert_eq!(split_checked, split, "{name}: the split head compared with the f64 model");
        let head = std::fs::read(out.join("head.onnx")).unwrap();
        let taps = head.windows(5).any(|w| w == b".taps");
        assert_eq!(taps, conv == DepthTaps, "{name}: the head's 3D convolutions as depth taps");
        // The CPU layout resizes by matrix products, and the skip decoder convolves the ASPP output
        // on its own grid instead of resizing and concatenating it.
        let has = |what: &[u8]| head.windows(what.len()).any(|w| w == what);
        assert_eq!(has(b"Resize"), conv == Native, "{name}: Resize nodes");
        assert_eq!(has(b"taps_of_resized"), conv == DepthTaps && decoder == Skip, "{name}: fused skip decoder");
        assert!(
            report.checks.len() >= 3 && report.checks.iter().all(|c| c.passed && c.max_rel <= 1e-4),
            "{:?}",
            report.checks
        );
        assert!(
            report.bundle_bytes as f64 <= 2.1 * report.weight_bytes as f64,
            "bundle {} B vs weights {} B",
            report.bundle_bytes,
            report.weight_bytes
        );

        let checked = common::python_json("check_bundle.py", &[out.to_str().unwrap()]);
        let n = model.net.spec().num_blocks();
        let projections = model.net.blocks.iter().filter(|b| b.shortcut.is_some()).count();
        let files = 3 + n + projections + if split { 2 } else { 0 };
        assert_eq!(checked.as_object().unwrap().len(), files, "stem, head, full, blocks, shortcuts, split head");
        for (file, r) in checked.as_object().unwrap() {
            assert_eq!(r["checker"], "ok", "{name} {file}: {}", r["checker"]);
            assert_eq!(r["ort"], "ok", "{name} {file}: {}", r["ort"]);
            assert_eq!(r["opset"], 17);
            assert_eq!(r["node_names_unique"], true);
        }

        let bundle = autopath_bundle::Bundle::load(&out).unwrap();
        assert_eq!(bundle.manifest.producer.conv3d, conv);
        let listed = bundle.manifest.architecture.low_level.as_ref().and_then(|l| l.split.as_ref());
        assert_eq!(listed.is_some(), split, "{name}: the split head in the manifest");
        let mut s = Sessions::open(&bundle, &SessionOptions::default()).unwrap();
        let x = Array5::from_shape_fn((2, 1, 16, 32, 32), |(b, _, z, y, w)| {
            ((b * 7 + z * 3 + y * 5 + w) as f32 * 0.37).sin()
        });
        let xt = Tensor::from_slice(x.as_slice().unwrap(), x.shape(), &Device::Cpu).unwrap();
        for dropped in 0..n {
            let mut keep = vec![true; n];
            keep[dropped] = false;
            let got = s.run_chain(x.view(), &keep).unwrap();
            let want =
                candle_nn::ops::sigmoid(&model.net.forward(&xt, BlockPath::Shared(&keep), false).unwrap()).unwrap();
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            let err = max_rel(got.as_slice().unwrap(), &want);
            assert!(err <= 1e-4, "{name}: dropping block {dropped}: relative error {err}");
        }
    }
}

fn autopath(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap()
}

#[test]
fn a_tampered_bundle_is_refused_naming_the_file() {
    for decoder in [DecoderKind::Paper, DecoderKind::Skip] {
        tampered_bundles_are_refused(decoder);
    }
}

fn tampered_bundles_are_refused(decoder: DecoderKind) {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model("r18", 3, decoder);
    let out = dir.path().join("bundle");
    compile(
        &model.net,
        &config(model.net.spec().clone()),
        None,
        None,
        &out,
        // The skip decoder's bundle with the split head, whose manifest entry is checked too.
        autopath::study::compile::CompileOptions {
            verify: false,
            conv: autopath_bundle::Conv3dLayout::DepthTaps,
            split_head: decoder == DecoderKind::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    let ok = autopath(&["inspect", out.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for victim in ["block_03.onnx", "head.onnx", "stem.onnx"] {
        let copy = dir.path().join(format!("t-{victim}"));
        copy_dir(&out, &copy);
        let p = copy.join(victim);
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
        let res = autopath(&["inspect", copy.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(victim) && err.contains("checksum"), "{err}");
        // Paths are checked first (they exist and take files), then the bundle.
        let (input, output) = (dir.path().join("in.nii"), dir.path().join("out.nii"));
        std::fs::write(&input, b"never read: the bundle is refused first").unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
            .args(["--bundle", copy.to_str().unwrap(), "-i", input.to_str().unwrap(), "-o", output.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && err.contains(victim), "{err}");
    }
    // A manifest from the future.
    let copy = dir.path().join("future");
    copy_dir(&out, &copy);
    let m = std::fs::read_to_string(copy.join("manifest.json")).unwrap().replacen(
        "\"schema_version\": 1",
        "\"schema_version\": 99",
        1,
    );
    std::fs::write(copy.join("manifest.json"), m).unwrap();
    let err = String::from_utf8_lossy(&autopath(&["inspect", copy.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains("schema version 99"), "{err}");
    // Hand-edited values the runtime would divide or index by are refused at load, by field.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut edits = vec![
        ("input.threshold = 1.5", ("/input/threshold", serde_json::json!(1.5))),
        ("input.window", ("/input/window/overlap", serde_json::json!(1.0))),
        ("architecture.blocks[2].index is 7", ("/architecture/blocks/2/index", serde_json::json!(7))),
        // The manifest's enums are closed sets; an unknown value names its field.
        ("architecture.decoder: unknown variant `unet`", ("/architecture/decoder", serde_json::json!("unet"))),
        ("producer.conv3d: unknown variant `winograd`", ("/producer/conv3d", serde_json::json!("winograd"))),
        ("architecture.block: unknown variant", ("/architecture/block", serde_json::json!("dense"))),
    ];
    if decoder == DecoderKind::Skip {
        edits.push((
            "low_level.after_block = 9 is not a block",
            ("/architecture/low_level/after_block", serde_json::json!(9)),
        ));
        edits.push(("low_level.shape", ("/architecture/low_level/shape/0", serde_json::json!(3))));
        edits.push(("low_level.split.shape", ("/architecture/low_level/split/shape/2", serde_json::json!(5))));
    } else {
        // A bundle from before the decoder was recorded (no `decoder` key) loads as the paper's.
        let copy = dir.path().join("old");
        copy_dir(&out, &copy);
        let mut m = manifest.clone();
        m["architecture"].as_object_mut().unwrap().remove("decoder").unwrap();
        std::fs::write(copy.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let res = autopath(&["inspect", copy.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&res.stdout);
        assert!(
            res.status.success() && text.contains("decoder: paper"),
            "{text}{}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    for (what, edit) in edits {
        let copy = dir.path().join(format!("edited-{}", edit.0.replace('/', "-")));
        copy_dir(&out, &copy);
        let mut m = manifest.clone();
        *m.pointer_mut(edit.0).unwrap() = edit.1;
        std::fs::write(copy.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let res = autopath(&["inspect", copy.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(what) && err.contains("manifest.json"), "{what}: {err}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_policy_for_another_number_of_blocks_is_refused_by_compile() {
    let dir = tempfile::tempdir().unwrap();
    let model = random_model("r18", 5, DecoderKind::Paper);
    let r50 = ArchSpec::preset("r50", 8, [16, 32, 32]).unwrap();
    let vars = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vars, candle_core::DType::F32, &Device::Cpu);
    let policy = autopath_models::policy::PolicyNet::load(vb, &r50).unwrap();
    let input = autopath::study::compile::PolicyInput { net: &policy, threshold: 0.5, training: None };
    let out = dir.path().join("bundle");
    let err = compile(
        &model.net,
        &config(model.net.spec().clone()),
        Some(input),
        None,
        &out,
        autopath::study::compile::CompileOptions { verify: false, ..Default::default() },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("16 blocks") && err.contains("has 8"), "{err}");
    assert!(!out.exists(), "nothing is written");
}
