//! The policy learns which blocks a volume does not need: with a segmenter whose blocks 0 and 1
//! are exact identities (residual branch zeroed) and whose other blocks change the prediction, it
//! must drop exactly the identities.

use autopath::input::preprocess::Preprocess;
use std::path::Path;
use std::process::Command;

use autopath::input::preprocess::Preprocessing;
use autopath::input::volume::{read_volume, write_labels, ReadOptions};
use autopath::input::window::{Blend, WindowConfig};
use autopath::study::dataset::Dataset;
use autopath::study::train::checkpoint::{save, write_json};
use autopath::study::train::infer::{labels, predict_probabilities};
use autopath::study::train::policy::{load_policy, train_policy, Method, PolicyConfig};
use autopath::study::train::segment::{CheckpointMeta, Model, TrainConfig};
use autopath_models::deeplab::BlockPath;
use autopath_models::spec::ArchSpec;

/// Blocks 0 and 1: identity shortcuts whose input is never negative (the stem's or block 0's ReLU
/// output), so a zero branch makes them identities whatever else is dropped. (A zeroed block after a
/// projection block is not: when the projection block is dropped its output can be negative, and
/// keeping the next block then applies a ReLU that matters.)
const IDENTITY: [usize; 2] = [0, 1];

/// Phantoms labelled by a random r18 whose blocks 0 and 1 are identities, saved as a segmenter run.
struct Fixture {
    dir: tempfile::TempDir,
    seg: std::path::PathBuf,
    spec: ArchSpec,
    ds: Dataset,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ok = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args([
            "synth",
            "--quiet",
            "--cases",
            "8",
            "--size",
            "16,32,32",
            "--seed",
            "5",
            "--out",
            data.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());

    // A random segmenter with three identity blocks.
    let spec = ArchSpec::preset("r18", 4, [16, 32, 32]).unwrap();
    let model = Model::new(&spec, 21, &candle_core::Device::Cpu).unwrap();
    for (name, var) in model.state() {
        if IDENTITY.iter().any(|&n| {
            name == format!("{}.bn2.weight", spec.blocks()[n].name())
                || name == format!("{}.bn2.bias", spec.blocks()[n].name())
        }) {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let window = WindowConfig { patch: spec.patch, overlap: 0.5, blend: Blend::default() };
    // Labels = the full network's own prediction: the full path is exactly right, and any block that
    // changes the output costs accuracy.
    let prep = Preprocessing::default();
    let ds = Dataset::open(&data, None).unwrap();
    let mut worst_needed = f64::MAX;
    for case in &ds.cases {
        let vol = read_volume(&case.image, &ReadOptions::default()).unwrap();
        let (img, rec) = prep.image(&vol).unwrap();
        let full = labels(
            &predict_probabilities(&model.net, &img, rec.pad_value, &window, BlockPath::Full, 2).unwrap(),
            spec.output,
        );
        write_labels(case.label.as_ref().unwrap(), &full, &vol.geometry).unwrap();
        for n in 0..8 {
            let mut keep = vec![true; 8];
            keep[n] = false;
            let pred = labels(
                &predict_probabilities(&model.net, &img, rec.pad_value, &window, BlockPath::Shared(&keep), 2).unwrap(),
                spec.output,
            );
            let changed = pred.iter().zip(full.iter()).filter(|(a, b)| a != b).count() as f64 / full.len() as f64;
            if IDENTITY.contains(&n) {
                assert_eq!(changed, 0.0, "identity block {n} changes the prediction");
            } else {
                worst_needed = worst_needed.min(changed);
            }
        }
    }
    eprintln!("smallest change from dropping a needed block: {worst_needed}");
    assert!(worst_needed > 0.01, "every other block must matter (fraction of voxels changed: {worst_needed})");

    let ids: Vec<String> = ds.cases.iter().map(|c| c.id.clone()).collect();
    let cfg = TrainConfig {
        data: data.clone(),
        train_ids: ids[..6].to_vec(),
        val_ids: ids[6..].to_vec(),
        tile_batch: 2,
        ..TrainConfig::for_spec(spec.clone())
    };
    let seg = dir.path().join("seg");
    std::fs::create_dir_all(&seg).unwrap();
    write_json(&seg.join("config.json"), &cfg).unwrap();
    let meta = CheckpointMeta {
        epoch: 0,
        steps: 0,
        loss: 0.0,
        val_dice: None,
        best_dice: None,
        best_epoch: None,
        rng_word_pos: "0".into(),
        dropout: (0, 0),
    };
    save(&seg, "best", &model.tensors(), &meta).unwrap();
    Fixture { dir, seg, spec, ds }
}

fn config(seg: &std::path::Path, method: Method) -> PolicyConfig {
    PolicyConfig {
        method,
        tau: 50.0,
        curriculum_epochs: 5,
        lr: 0.003,
        batch: 6,
        epochs: if method == Method::Paper { 400 } else { 60 },
        val_every: if method == Method::Paper { 50 } else { 10 },
        seed: 3,
        tile_batch: 2,
        ..PolicyConfig::new(seg.to_path_buf())
    }
}

/// Trains a policy with `method` and checks that it keeps every needed block and drops both identities
/// on every volume.
fn learns_the_identities(method: Method) {
    let f = fixture();
    let run = f.dir.path().join("policy");
    train_policy(config(&f.seg, method), &run, &candle_core::Device::Cpu, &Default::default(), &|_| {}).unwrap();
    let (policy, _, meta) = load_policy(&run, "last").unwrap();
    assert!(meta.forced.iter().all(|&f| !f), "every block is learned");
    let prep = Preprocessing::default();
    for case in &f.ds.cases {
        let vol = read_volume(&case.image, &ReadOptions::default()).unwrap();
        let (img, _) = prep.image(&vol).unwrap();
        let p: Vec<f32> =
            autopath::study::train::infer::keep_probabilities(&policy, &img, f.spec.policy.input).unwrap();
        let keep: Vec<bool> = p.iter().map(|&v| v >= 0.5).collect();
        let want: Vec<bool> = (0..8).map(|n| !IDENTITY.contains(&n)).collect();
        assert_eq!(keep, want, "{method:?}, case {}: keep probabilities {p:?}", case.id);
    }
}

#[test]
fn the_paper_policy_learns_to_drop_exactly_the_identity_blocks() {
    learns_the_identities(Method::Paper);
}

#[test]
fn the_distilled_policy_learns_to_drop_exactly_the_identity_blocks() {
    learns_the_identities(Method::Distil);
}

/// `autopath-run --budget F` on volumes the calibration never saw spends F of the full FLOPs on average
/// (within 5 points) at every calibrated point, and a budget below the cheapest is refused by name.
#[test]
fn the_budget_calibration_holds_on_held_out_volumes() {
    let f = fixture();
    let run = f.dir.path().join("policy");
    train_policy(config(&f.seg, Method::Distil), &run, &candle_core::Device::Cpu, &Default::default(), &|_| {})
        .unwrap();
    let bundle = f.dir.path().join("bundle");
    let out = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["compile", "--seg", f.seg.to_str().unwrap(), "--policy", run.to_str().unwrap(), "--out"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let curve: Vec<(f64, f64)> = manifest["policy"]["budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["threshold"].as_f64().unwrap(), p["flop_fraction"].as_f64().unwrap()))
        .collect();
    assert!(curve.len() >= 2 && curve.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1), "{curve:?}");
    assert_eq!(curve[0].1, 1.0, "the lowest threshold keeps every block");
    // The manifest records how the policy was trained, and the threshold it deploys is that record's.
    let training = &manifest["policy"]["training"];
    assert_eq!(training["method"], "distil");
    assert_eq!(training["threshold_from_validation"], false);
    assert_eq!(training["threshold"].as_f64(), manifest["policy"]["threshold"].as_f64());
    assert_eq!(manifest["policy"]["threshold"].as_f64(), Some(0.5));

    // Held-out volumes: phantoms of another seed.
    let held_out = f.dir.path().join("held-out");
    let ok = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["synth", "--quiet", "--cases", "4", "--size", "16,32,32", "--seed", "99", "--out"])
        .arg(&held_out)
        .status()
        .unwrap();
    assert!(ok.success());
    let images: Vec<_> = Dataset::open(&held_out, None).unwrap().cases.into_iter().map(|c| c.image).collect();
    let inputs = f.dir.path().join("held-out-images");
    std::fs::create_dir_all(&inputs).unwrap();
    for i in &images {
        std::fs::copy(i, inputs.join(i.file_name().unwrap())).unwrap();
    }
    for &(_, budget) in &curve {
        let dir = f.dir.path().join(format!("budget-{budget:.4}"));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.jsonl");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopath-run"));
        cmd.args(["--bundle", bundle.to_str().unwrap(), "--budget", &budget.to_string(), "--quiet", "-o"])
            .arg(&dir)
            .arg("--report")
            .arg(&report)
            .arg("-i")
            .arg(&inputs);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        // Each volume's decision margin: the smallest distance of a keep probability to the threshold
        // the budget was turned into.
        for v in lines.iter().filter(|v| v.get("keep").is_some()) {
            let t = v["threshold"].as_f64().unwrap();
            let p: Vec<f64> = v["keep_probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
            let want = p.iter().map(|p| (p - t).abs()).fold(f64::INFINITY, f64::min);
            assert!((v["margin"].as_f64().unwrap() - want).abs() < 1e-6, "{v}");
            let keep: String = p.iter().map(|&p| if p >= t { '1' } else { '0' }).collect();
            assert_eq!(v["keep"], keep.as_str(), "the mask is the probabilities against the threshold");
        }
        let spent: Vec<f64> = lines.iter().filter_map(|v| v["flop_fraction"].as_f64()).collect();
        assert_eq!(spent.len(), images.len());
        let mean = spent.iter().sum::<f64>() / spent.len() as f64;
        assert!((mean - budget).abs() <= 0.05, "budget {budget}: held-out volumes spent {mean}");
    }
    let cheapest = curve.last().unwrap().1;
    let out = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args(["--bundle", bundle.to_str().unwrap(), "--budget", &(cheapest / 2.0).to_string(), "-o"])
        .arg(f.dir.path().join("none.nii.gz"))
        .arg("-i")
        .arg(&images[0])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("below the cheapest"), "{err}");
    assert!(!f.dir.path().join("none.nii.gz").exists());
    guard_reads_its_bound_from_the_manifest(&manifest, &bundle, &inputs, f.dir.path());
    path_graphs_are_listed_and_checked(&manifest, &bundle, f.dir.path());
    measured_costs_give_a_time_budget(&f, &run, &bundle, &inputs);
}

/// `bench --calibrate` times every graph; `compile --cost` stores the table and a time-budget curve;
/// `--time-budget` then holds on held-out volumes by the table's own arithmetic (each path: stem, head,
/// kept blocks, dropped blocks' shortcuts), the report giving each path's time fraction.
fn measured_costs_give_a_time_budget(f: &Fixture, run: &Path, bundle: &Path, inputs: &Path) {
    let dir = f.dir.path();
    let cal = dir.join("calibration");
    let autopath = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap();
    let o = autopath(&[
        "bench",
        "--bundle",
        bundle.to_str().unwrap(),
        "--calibrate",
        "--repeats",
        "3",
        "--out",
        cal.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cost: serde_json::Value = serde_json::from_slice(&std::fs::read(cal.join("cost.json")).unwrap()).unwrap();
    let blocks = cost["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 8);
    let table = std::fs::read_to_string(cal.join("cost.md")).unwrap();
    assert!(table.contains("| stem + head |") && table.contains("| block 7 (dropping saves) |"), "{table}");
    let ms = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(ms(&cost["stem_ms"]) > 0.0 && ms(&cost["head_ms"]) > 0.0 && ms(&cost["full_ms"]) > 0.0);
    assert!(blocks.iter().all(|b| ms(&b["kept_ms"]) > 0.0 && ms(&b["shortcut_ms"]) >= 0.0));
    let timed = dir.join("bundle-timed");
    let seg = f.seg.to_str().unwrap();
    let cost_file = cal.join("cost.json");
    let compile_with = |cost: &Path, out: &Path| {
        let (run, cost, out) = (run.to_str().unwrap(), cost.to_str().unwrap(), out.to_str().unwrap());
        autopath(&["compile", "--seg", seg, "--policy", run, "--cost", cost, "--out", out])
    };
    let o = compile_with(&cost_file, &timed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(timed.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["measured_cost"], cost);
    let points: Vec<(f64, f64)> = manifest["policy"]["time_budget"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["threshold"].as_f64().unwrap(), p["flop_fraction"].as_f64().unwrap()))
        .collect();
    let curve: Vec<f64> = points.iter().map(|p| p.1).collect();
    assert!(curve.len() >= 2 && curve[0] == 1.0 && curve.windows(2).all(|w| w[0] > w[1]), "{curve:?}");
    // The table's arithmetic, in f64 here: whole nanoseconds as the manifest counts them.
    let ns = |v: f64| (v.max(0.0) * 1e6).round();
    let fraction = |keep: &str| {
        let fixed = ns(ms(&cost["stem_ms"])) + ns(ms(&cost["head_ms"]));
        let (mut path, mut full) = (fixed, fixed);
        for (b, k) in blocks.iter().zip(keep.chars()) {
            let shortcut = ns(ms(&b["shortcut_ms"]));
            let branch = ns(ms(&b["kept_ms"]) - ms(&b["shortcut_ms"]));
            full += branch + shortcut;
            path += if k == '1' { branch + shortcut } else { shortcut };
        }
        path / full
    };
    for &(threshold, budget) in &points {
        let out = dir.join(format!("timed-{budget:.4}"));
        let report = out.join("report.jsonl");
        let o = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
            .args(["--bundle", timed.to_str().unwrap(), "--time-budget", &budget.to_string(), "--quiet", "-i"])
            .arg(inputs)
            .arg("-o")
            .arg(&out)
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let spent: Vec<f64> = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("keep").is_some())
            .map(|v| {
                // The budget became the curve's threshold for it.
                assert!((v["threshold"].as_f64().unwrap() - threshold).abs() < 1e-6, "{v}");
                let want = fraction(v["keep"].as_str().unwrap());
                assert!((v["time_fraction"].as_f64().unwrap() - want).abs() < 1e-9, "{v}");
                want
            })
            .collect();
        let mean = spent.iter().sum::<f64>() / spent.len() as f64;
        // Held-out volumes of a network whose graphs take microseconds: the spend follows the budget
        // more loosely than the FLOPs do (the largest miss measured: 0.057).
        assert!((mean - budget).abs() <= 0.1, "time budget {budget}: held-out volumes spent {mean}");
    }
    // Without a table, or with one of another network, the options are refused with the reason.
    let o = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args(["--bundle", bundle.to_str().unwrap(), "--time-budget", "0.8", "-i"])
        .arg(inputs)
        .arg("-o")
        .arg(dir.join("untimed"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no measured cost"), "{err}");
    let mut short = cost.clone();
    short["blocks"].as_array_mut().unwrap().pop();
    std::fs::write(dir.join("short.json"), short.to_string()).unwrap();
    let short_file = dir.join("short.json");
    let o = compile_with(&short_file, &dir.join("bundle-short"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("7 block times for a network of 8 blocks"), "{err}");
}

/// The whole-path graphs: the policy's most frequent paths, most frequent first, never the full path;
/// a hand-edited entry is refused at load, by field.
fn path_graphs_are_listed_and_checked(manifest: &serde_json::Value, bundle: &Path, dir: &Path) {
    let graphs = manifest["policy"]["path_graphs"].as_array().cloned().unwrap_or_default();
    let counts: Vec<u64> = graphs.iter().map(|g| g["volumes"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]) && counts.iter().all(|&c| c >= 1), "{graphs:?}");
    for g in &graphs {
        let mask = g["mask"].as_str().unwrap();
        assert!(mask.contains('0') && bundle.join(g["file"].as_str().unwrap()).exists(), "{g}");
    }
    let Some(first) = graphs.first() else {
        // Nothing to edit: this policy kept every block on every calibration volume.
        let line = "SKIPPED: path_graphs edits (the policy took no reduced path on its calibration volumes)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    };
    for (field, value, why) in [
        ("mask", serde_json::json!("101"), "policy.path_graphs[0].mask"),
        ("file", serde_json::json!("elsewhere.onnx"), "is not among the files"),
    ] {
        let copy = dir.join(format!("edited-path-{field}"));
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(bundle).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        let mut m = manifest.clone();
        m["policy"]["path_graphs"][0][field] = value;
        std::fs::write(copy.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let res =
            Command::new(env!("CARGO_BIN_EXE_autopath")).args(["inspect", copy.to_str().unwrap()]).output().unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success() && err.contains(why), "{field} {first}: {err}");
    }
}

/// The guard: calibrated at compile time over the run's volumes; with `--guard`, held-out phantoms of
/// the same family keep the policy's paths and an MR head given to this CT bundle takes the full
/// network.
fn guard_reads_its_bound_from_the_manifest(manifest: &serde_json::Value, bundle: &Path, inputs: &Path, dir: &Path) {
    let guard = &manifest["policy"]["guard"];
    let bound = guard["bound"].as_f64().unwrap();
    assert!(bound >= 4.0 && guard["volumes"].as_u64().unwrap() >= 4, "{guard}");
    let mr = dir.join("mr");
    let ok = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["synth", "--quiet", "--family", "mr", "--cases", "1", "--size", "16,32,32", "--out"])
        .arg(&mr)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::copy(mr.join("volume-0.nii.gz"), inputs.join("zz-mr.nii.gz")).unwrap();
    let (out, report) = (dir.join("guarded"), dir.join("guarded.jsonl"));
    let o = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args(["--bundle", bundle.to_str().unwrap(), "--guard", "--quiet", "-i", inputs.to_str().unwrap()])
        .args(["-o", out.to_str().unwrap(), "--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("keep").is_some())
        .collect();
    for v in &lines {
        let g = &v["guard"];
        assert_eq!(g["bound"].as_f64(), Some(bound), "the bound is the manifest's");
        let mr = v["input"].as_str().unwrap().ends_with("zz-mr.nii.gz");
        assert_eq!(g["tripped"], mr, "{v}");
        if mr {
            assert!(g["distance"].as_f64().unwrap() > bound);
            assert!(v["keep"].as_str().unwrap().chars().all(|c| c == '1'), "{v}");
        }
    }
    std::fs::remove_file(inputs.join("zz-mr.nii.gz")).unwrap();
}
