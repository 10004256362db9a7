//! `autopath-run` against the Candle model it was compiled from: identical masks, the input's
//! geometry, and per-file errors for bad inputs.

mod common;

use autopath::input::preprocess::Preprocess;
use std::path::{Path, PathBuf};
use std::process::Command;

use autopath::input::preprocess::Preprocessing;
use autopath::input::volume::{read_volume, ReadOptions};
use autopath::study::train::infer::{labels, predict_probabilities};
use autopath::study::train::segment::load_segmenter;
use autopath_models::deeplab::BlockPath;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    fn bundle(&self) -> PathBuf {
        self.root.join("bundle")
    }
}

fn autopath(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap();
    assert!(out.status.success(), "autopath {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Phantoms, a briefly trained tiny segmenter, and its bundle.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    common::trained_bundle(&root);
    Fixture { _dir: dir, root }
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopath-run")).args(args).output().unwrap()
}

/// `autopath-run --bundle BUNDLE -i INPUT -o OUT` with `extra` flags.
fn segment(bundle: &Path, input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (b, i, o) = (bundle.to_str().unwrap(), input.to_str().unwrap(), out.to_str().unwrap());
    run_cli(&[&["--bundle", b, "-i", i, "-o", o], extra].concat())
}

#[test]
fn outputs_equal_the_candle_predictions_and_keep_the_input_geometry() {
    let f = fixture();
    let (net, cfg) = load_segmenter(&f.run(), "best").unwrap();
    let out = f.root.join("out");
    let some = vec![true, false, true, true, false, true, false, true];
    // A path without a graph in the bundle runs as one graph joined from the segments; with
    // `--joined-paths 0` as the chain of block sessions, here through IoBinding with outputs bound to
    // host memory (the code path that keeps values on the GPU under CUDA): the same results.
    for (path, mask, binding, joined) in
        [("full", vec![true; 8], "auto", "8"), ("10110101", some.clone(), "auto", "8"), ("10110101", some, "on", "0")]
    {
        let o = out.join(format!("{path}-{binding}"));
        let trace = out.join(format!("trace-{path}-{binding}"));
        let res = run_cli(&[
            "--bundle",
            f.bundle().to_str().unwrap(),
            "-i",
            f.data().to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
            "--path",
            path,
            "--quiet",
            "--tile-batch",
            "3",
            "--io-binding",
            binding,
            "--ort-trace",
            trace.to_str().unwrap(),
            "--joined-paths",
            joined,
        ]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        check_traces(&trace, &mask, joined != "0");
        for k in 0..5 {
            let input = f.data().join(format!("volume-{k}.nii.gz"));
            let vol = read_volume(&input, &ReadOptions::default()).unwrap();
            let prep = Preprocessing::default();
            let (image, rec) = prep.image(&vol).unwrap();
            let probs =
                predict_probabilities(&net, &image, rec.pad_value, &cfg.window, BlockPath::Shared(&mask), 2).unwrap();
            let want = prep.restore(labels(&probs, net.spec().output), &rec);
            // Two f32 implementations may round a probability of 0.5 ± 1e-6 to different sides: only
            // such voxels may differ.
            let tie = probs.index_axis(ndarray::Axis(0), 0).mapv(|p| u8::from((p - 0.5).abs() < 1e-4));
            let tie = prep.restore(tie, &rec);
            let got = read_volume(&o.join(format!("volume-{k}.nii.gz")), &ReadOptions::default()).unwrap();
            let differ: Vec<usize> = (0..want.len())
                .filter(|&i| got.data.as_slice().unwrap()[i] as u8 != want.as_slice().unwrap()[i])
                .collect();
            assert!(
                differ.iter().all(|&i| tie.as_slice().unwrap()[i] == 1) && differ.len() <= 3,
                "path {path} ({binding}), case {k}: {} voxels differ from the Candle prediction",
                differ.len()
            );
        }
        // Label maps also include segmentation-K inputs from the folder: check geometry on all.
        let files: Vec<String> = (0..5)
            .map(|k| o.join(format!("volume-{k}.nii.gz")).display().to_string())
            .chain((0..5).map(|k| f.data().join(format!("volume-{k}.nii.gz")).display().to_string()))
            .collect();
        let seen = common::python_json("nifti_inspect.py", &files.iter().map(String::as_str).collect::<Vec<_>>());
        for k in 0..5 {
            let (o, i) = (&seen[&files[k]], &seen[&files[k + 5]]);
            for key in ["shape", "affine", "pixdim", "qform_code", "sform_code"] {
                assert_eq!(o[key], i[key], "{key} of output {k}");
            }
            assert_eq!(o["dtype"], "uint8");
            assert!(o["unique"].as_array().unwrap().iter().all(|v| [0.0, 1.0].contains(&v.as_f64().unwrap())));
        }
    }
}

/// The first `--joined-paths` distinct paths without a graph in the bundle are joined, later ones run
/// as the chain, and a path once joined stays joined; the joined graph writes the chain's bytes.
#[test]
fn joined_paths_are_capped_and_write_the_chain_s_bytes() {
    use autopath::deploy::{Predictor, PredictorOptions, SessionOptions};
    let f = fixture();
    let session = SessionOptions { joined_paths: 1, ..Default::default() };
    let p = Predictor::from_bundle(&f.bundle(), &PredictorOptions { session, ..Default::default() }).unwrap();
    let (a, b) = ([true, false, true, true, true, true, true, true], [true, true, false, true, true, true, true, true]);
    assert_eq!(p.graph_for(&a), "joined path_10111111.onnx");
    assert_eq!(p.graph_for(&b), "chain");
    assert_eq!(p.graph_for(&a), "joined path_10111111.onnx");
    assert_eq!(p.graph_for(&[true; 8]), "full.onnx");
    let outs = ["8", "0"].map(|joined| {
        let o = f.root.join(format!("joined-{joined}"));
        let res = segment(&f.bundle(), &f.data(), &o, &["--path", "01101011", "--quiet", "--joined-paths", joined]);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        o
    });
    // The joined graph passes the official checker and loads in ONNX Runtime.
    let bundle = autopath_bundle::Bundle::load(&f.bundle()).unwrap();
    let bytes = autopath::deploy::joined::path_graph(&bundle, &b).unwrap();
    let checked_dir = f.root.join("joined-graph");
    std::fs::create_dir_all(&checked_dir).unwrap();
    std::fs::write(checked_dir.join("path_11011111.onnx"), bytes).unwrap();
    let checked = common::python_json("check_bundle.py", &[checked_dir.to_str().unwrap()]);
    let r = &checked["path_11011111.onnx"];
    assert_eq!((&r["checker"], &r["ort"], &r["node_names_unique"]), (&"ok".into(), &"ok".into(), &true.into()), "{r}");
    let files = common::listing(&outs[0]);
    assert_eq!(files.len(), 10);
    for name in files {
        let (x, y) = (std::fs::read(outs[0].join(&name)).unwrap(), std::fs::read(outs[1].join(&name)).unwrap());
        assert!(x == y, "{name}: the joined graph and the chain wrote different bytes");
    }
}

/// `--ort-trace`: one ONNX Runtime trace per session (named after its graph) with the nodes it ran and
/// their provider. Every block kept: `full.onnx` alone (one session, the same network). Otherwise, in
/// a bundle without a graph for the path: nodes for the stem, the head and every kept block, none for
/// a dropped block; joined, all in the one session of the joined graph (its nodes named after their
/// segment), else in the segments' own sessions.
fn check_traces(dir: &Path, keep: &[bool], joined: bool) {
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let nodes_of = |session: &str| -> Vec<String> {
        let Some(file) = names.iter().find(|n| n.starts_with(&format!("{session}_")) && n.ends_with(".json")) else {
            return Vec::new();
        };
        let events: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let ran = |e: &&serde_json::Value| {
            e["cat"] == "Node" && e["args"]["provider"] == "CPUExecutionProvider" && e["args"]["op_name"].is_string()
        };
        events.as_array().unwrap().iter().filter(ran).map(|e| e["name"].as_str().unwrap_or("").to_string()).collect()
    };
    if keep.iter().all(|&k| k) {
        let ran = |g: &str| !nodes_of(g).is_empty();
        assert!(ran("full") && !ran("stem") && !ran("block_00"), "full.onnx alone: {names:?}");
        return;
    }
    let joined_nodes = nodes_of(&format!("joined_path_{}", autopath::labels::mask_text(keep)));
    let graph_ran = |segment: &str| match joined {
        true => joined_nodes.iter().any(|n| n.starts_with(&format!("{segment}/"))),
        false => !nodes_of(segment).is_empty(),
    };
    assert_eq!(joined, !joined_nodes.is_empty(), "the joined session's trace in {names:?}");
    assert!(graph_ran("stem") && graph_ran("head"), "stem and head missing in {names:?}");
    for (n, &k) in keep.iter().enumerate() {
        assert_eq!(graph_ran(&format!("block_{n:02}")), k, "block {n} (kept: {k}) in {names:?}");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_inputs_fail_per_file_and_leave_nothing_behind() {
    let f = fixture();
    let good = std::fs::read(f.data().join("volume-0.nii.gz")).unwrap();
    let raw = {
        use std::io::Read;
        let mut v = Vec::new();
        flate2::read::GzDecoder::new(&good[..]).read_to_end(&mut v).unwrap();
        v
    };
    let inputs = f.root.join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    write(&inputs, "a_good.nii.gz", &good);
    write(&inputs, "truncated.nii", &raw[..raw.len() / 2]);
    let mut magic = raw.clone();
    magic[344..348].copy_from_slice(b"abc\0");
    write(&inputs, "magic.nii", &magic);
    let mut four_d = raw.clone();
    four_d[40..42].copy_from_slice(&4i16.to_le_bytes());
    four_d[48..50].copy_from_slice(&3i16.to_le_bytes());
    write(&inputs, "four_d.nii", &four_d);
    let mut absurd = raw.clone();
    absurd[42..44].copy_from_slice(&30000i16.to_le_bytes());
    absurd[44..46].copy_from_slice(&30000i16.to_le_bytes());
    write(&inputs, "absurd.nii", &absurd);
    // NaN voxels: rewrite as float32 with one NaN.
    let mut nan = raw[..352].to_vec();
    nan[70..72].copy_from_slice(&16i16.to_le_bytes());
    nan[72..74].copy_from_slice(&32i16.to_le_bytes());
    let n = (raw.len() - 352) / 2;
    for i in 0..n {
        let v = if i == 17 { f32::NAN } else { 0.0 };
        nan.extend_from_slice(&v.to_le_bytes());
    }
    write(&inputs, "nan.nii", &nan);
    write(&inputs, "notes.nii.gz", b"this is not an image");

    let out = f.root.join("out");
    let report = f.root.join("report.jsonl");
    let res = run_cli(&[
        "--bundle",
        f.bundle().to_str().unwrap(),
        "-i",
        inputs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(1), "a failed file makes the exit code non-zero");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!err.contains("panicked"), "{err}");
    for (name, why) in [
        ("truncated.nii", "file ends inside the voxel data"),
        ("magic.nii", "bad magic"),
        ("four_d.nii", "not a 3D image"),
        ("absurd.nii", "over the limit"),
        ("nan.nii", "NaN"),
        ("notes.nii.gz", "file ends inside the header"),
    ] {
        assert!(err.lines().any(|l| l.contains(name) && l.contains(why)), "{name}: expected '{why}' in:\n{err}");
    }
    assert_eq!(common::listing(&out), ["a_good.nii.gz"], "only the good volume has an output, no partial files");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!((summary["segmented"].as_u64(), summary["failed"].as_u64()), (Some(1), Some(6)));
    let ok = lines.iter().find(|l| l["output"].is_string()).unwrap();
    assert_eq!(ok["keep"], "11111111");
    assert!(ok["seconds"]["network"].as_f64().unwrap() > 0.0 && ok["peak_rss_mb"].as_f64().unwrap() > 0.0);

    // An output folder that cannot be written.
    let blocked = f.root.join("blocked");
    std::fs::write(&blocked, b"a file, not a folder").unwrap();
    let res = run_cli(&[
        "--bundle",
        f.bundle().to_str().unwrap(),
        "-i",
        inputs.join("a_good.nii.gz").to_str().unwrap(),
        "-o",
        blocked.join("x.nii.gz").to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("x.nii.gz"));
}

#[test]
fn bench_refuses_zero_repeats_with_a_clear_error() {
    let f = fixture();
    let out = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["bench", "--bundle", f.bundle().to_str().unwrap(), "--data", f.data().to_str().unwrap()])
        .args(["--repeats", "0", "--out", f.root.join("bench").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--repeats") && !err.contains("panicked"), "{err}");
}

#[test]
fn continue_and_shard_split_the_work_without_overlap() {
    let f = fixture();
    let mut seen = Vec::new();
    for i in 0..3 {
        let out = f.root.join("sharded");
        let res = run_cli(&[
            "--bundle",
            f.bundle().to_str().unwrap(),
            "-i",
            f.data().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--shard",
            &format!("{i}/3"),
            "--quiet",
            "--path",
            "full",
        ]);
        assert!(res.status.success());
        let now = common::listing(&out);
        seen.push(now.len());
    }
    // 10 files (5 volumes + 5 label maps) over 3 shards: 4 + 3 + 3, all distinct.
    assert_eq!(seen, [4, 7, 10]);
    let res = run_cli(&[
        "--bundle",
        f.bundle().to_str().unwrap(),
        "-i",
        f.data().to_str().unwrap(),
        "-o",
        f.root.join("sharded").to_str().unwrap(),
        "--continue",
        "--quiet",
    ]);
    assert!(String::from_utf8_lossy(&res.stderr).contains("0 segmented, 0 failed, 10 skipped"));
}

#[test]
fn a_gpu_provider_that_is_missing_is_an_error_unless_fallback_is_allowed() {
    let f = fixture();
    let input = f.data().join("volume-1.nii.gz");
    let out = f.root.join("cuda.nii.gz");
    let res = run_cli(&[
        "--bundle",
        f.bundle().to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ep",
        "cuda",
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Cuda unavailable")
            && err.contains("make setup-gpu")
            && err.contains("--allow-fallback")
            && !err.contains("panicked"),
        "{err}"
    );
    assert!(!out.exists());
    let res = run_cli(&[
        "--bundle",
        f.bundle().to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--ep",
        "cuda",
        "--allow-fallback",
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");
    assert!(out.exists());
    // One warning for the whole bundle (about 20 graphs), naming what failed and where it runs.
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("Cuda unavailable") && warnings[0].contains("running on Cpu"), "{err}");
}

#[test]
fn auto_path_outputs_equal_the_evaluation_s_autopath_predictions() {
    use autopath::study::path_eval::PathEvaluator;
    use autopath::study::train::data::load_sample;
    use autopath::study::train::policy::load_policy;
    use autopath_bundle::Bundle;

    let f = fixture();
    let policy = f.root.join("policy");
    autopath(&[
        "train-policy",
        "--quiet",
        "--seg",
        f.run().to_str().unwrap(),
        "--out",
        policy.to_str().unwrap(),
        "--epochs",
        "6",
        "--curriculum-epochs",
        "1",
        "--val-every",
        "3",
    ]);
    let bundle = f.root.join("bundle-auto");
    autopath(&[
        "compile",
        "--seg",
        f.run().to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    let out = f.root.join("auto");
    let report = f.root.join("auto.jsonl");
    let res = run_cli(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "-i",
        f.data().to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quiet",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));

    // What `autopath eval` computes for AutoPath: the Candle policy's greedy mask, run through the
    // path evaluator on the segmenter's graphs.
    let (_, cfg) = load_segmenter(&f.run(), "best").unwrap();
    let (p, pc, _) = load_policy(&policy, "best").unwrap();
    let b = Bundle::load(&bundle).unwrap();
    let mut ev = PathEvaluator::open(&b, cfg.window, 2).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&report).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ds = autopath::study::dataset::Dataset::open(&f.data(), None).unwrap();
    let mut through_path_graphs = 0;
    for case in &ds.cases {
        let s = load_sample(case, &cfg.preprocessing).unwrap();
        let probs: Vec<f32> =
            autopath::study::train::infer::keep_probabilities(&p, &s.image, cfg.spec.policy.input).unwrap();
        let mask: Vec<bool> = probs.iter().map(|&v| v >= pc.threshold).collect();
        let prepared = ev.prepare(&s.image, s.record.pad_value, None).unwrap();
        let want = ev.evaluate(&prepared, std::slice::from_ref(&mask), true).unwrap().remove(0).prediction.unwrap();
        let name = case.image.file_name().unwrap().to_string_lossy().to_string();
        let line = lines.iter().find(|l| l["input"].as_str().is_some_and(|i| i.ends_with(&name))).unwrap();
        let text: String = mask.iter().map(|&k| if k { '1' } else { '0' }).collect();
        assert_eq!(line["keep"], text, "{name}: the runtime's policy chose another path");
        // The path ran through the bundle's graph for it where compile made one.
        let graphs = b.manifest.policy.as_ref().map(|p| p.path_graphs.clone()).unwrap_or_default();
        let expected = if mask.iter().all(|&k| k) {
            "full.onnx".to_string()
        } else {
            let joined = format!("joined {}", autopath_bundle::names::path_file(&text));
            graphs.iter().find(|g| g.mask == text).map_or(joined, |g| g.file.clone())
        };
        assert_eq!(line["graph"], expected.as_str(), "{name}");
        through_path_graphs += usize::from(expected.starts_with("path_"));
        let got = read_volume(&out.join(&name), &ReadOptions::default()).unwrap();
        let differ = got.data.iter().zip(want.iter()).filter(|(a, b)| **a as u8 != **b).count();
        assert_eq!(differ, 0, "{name}: {differ} voxels differ from eval's AutoPath prediction");
    }
    assert!(
        through_path_graphs >= 1,
        "no volume ran through a whole-path graph: the comparison above tested only the chain"
    );

    // The whole-network graphs through fixed bound buffers (the form `--cuda-graph` takes on a GPU),
    // three tiles per call so that short batches are padded: the same bytes.
    for path in ["auto", "full"] {
        let bound = f.root.join(format!("bound-{path}"));
        let plain = f.root.join(format!("plain-{path}"));
        for (o, binding) in [(&bound, "on"), (&plain, "off")] {
            let extra = ["--quiet", "--path", path, "--tile-batch", "3", "--io-binding", binding];
            let res = segment(&bundle, &f.data(), o, &extra);
            assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
        }
        assert_eq!(common::listing(&plain).len(), 10, "{path}: every volume and label map of the data set");
        for name in common::listing(&plain) {
            let (a, b) = (std::fs::read(plain.join(&name)).unwrap(), std::fs::read(bound.join(&name)).unwrap());
            assert!(a == b, "{path} {name}: bound buffers wrote other bytes");
        }
    }
    let elsewhere = f.root.join("cuda-graph");
    let refused = segment(&bundle, &f.data(), &elsewhere, &["--cuda-graph"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("CUDA graphs need --ep cuda"), "{stderr}");
}

/// `compile --precision fp16`: the manifest says so, the official checker and ONNX Runtime accept
/// every graph, and its labels (nibabel reading both outputs) agree with the fp32 bundle's on ≥ 99.9 %
/// of voxels with a Dice against the phantoms' truth within 0.005, on the full path and on a path with
/// blocks dropped. `--fp16` on the CPU is accepted for it and refused for the fp32 bundle.
#[test]
fn fp16_bundles_label_like_fp32_bundles() {
    let f = fixture();
    let half = f.root.join("bundle-fp16");
    let run = f.run();
    common::autopath(&[
        "compile",
        "--seg",
        run.to_str().unwrap(),
        "--out",
        half.to_str().unwrap(),
        "--precision",
        "fp16",
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(half.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["producer"]["precision"], "fp16");
    let checked = common::python_json("check_bundle.py", &[half.to_str().unwrap()]);
    for (file, r) in checked.as_object().unwrap() {
        assert_eq!((&r["checker"], &r["ort"]), (&"ok".into(), &"ok".into()), "{file}");
    }
    let refused = segment(&f.bundle(), &f.data(), &f.root.join("refused"), &["--fp16"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--precision fp16"), "{stderr}");
    assert!(!f.root.join("refused").join("volume-0.nii.gz").exists());
    for path in ["full", "10110101"] {
        let outs = [(f.bundle(), "fp32", None), (half.clone(), "fp16", Some("--fp16"))].map(|(bundle, name, flag)| {
            let o = f.root.join(format!("{name}-{path}"));
            let extra: Vec<&str> = ["--path", path, "--quiet"].into_iter().chain(flag).collect();
            let res = segment(&bundle, &f.data(), &o, &extra);
            assert!(res.status.success(), "{name} {path}: {}", String::from_utf8_lossy(&res.stderr));
            o
        });
        let [a, b] = outs.map(|p| p.display().to_string());
        let seen = common::python_json("label_agreement.py", &[&a, &b, f.data().to_str().unwrap()]);
        let agreement = seen["agreement"].as_f64().unwrap();
        let dice = (seen["dice_a"].as_f64().unwrap(), seen["dice_b"].as_f64().unwrap());
        assert_eq!(seen["files"], 5, "{seen}");
        assert!(agreement >= 0.999, "path {path}: fp16 labels agree with fp32 on {agreement}");
        assert!((dice.0 - dice.1).abs() <= 0.005, "path {path}: Dice fp32 {} vs fp16 {}", dice.0, dice.1);
        eprintln!("fp16 vs fp32, path {path}: agreement {agreement:.6}, Dice {:.4} vs {:.4}", dice.0, dice.1);
    }
}
