//! `autopath train`: exact resume, truthful `best`, and recovery from a killed process.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn autopath() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autopath"))
}

fn synth(dir: &Path) {
    let ok = autopath()
        .args(["synth", "--quiet", "--cases", "6", "--size", "16,40,40", "--seed", "3", "--out"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn train_args(data: &Path) -> Vec<String> {
    let d = data.display().to_string();
    [
        "train",
        "--quiet",
        "--data",
        &d,
        "--arch",
        "r18",
        "--width",
        "4",
        "--patch",
        "16,32,32",
        "--batch",
        "2",
        "--lr",
        "0.003",
        "--val-every",
        "1",
        "--val-cases",
        "1",
        "--split",
        "0.2",
        "--seed",
        "7",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(args: &[String], extra: &[&str]) {
    let out = autopath().args(args).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    v.sort();
    v
}

fn log_dice(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_dice"].as_f64())
        .collect()
}

#[test]
fn resumed_training_equals_uninterrupted_training_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let args = train_args(&data);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&args, &["--epochs", "4", "--out", a.to_str().unwrap()]);
    run(&args, &["--epochs", "2", "--out", b.to_str().unwrap()]);
    run(&["train".into(), "--quiet".into()], &["--resume", b.to_str().unwrap(), "--epochs", "4"]);
    let (ta, tb) = (tensors(&a.join("last.safetensors")), tensors(&b.join("last.safetensors")));
    assert!(ta.len() > 50, "parameters, buffers and optimizer state");
    assert!(ta.iter().any(|(n, _)| n.starts_with("adam.m.")) && ta.iter().any(|(n, _)| n.ends_with("running_var")));
    for ((na, da), (nb, db)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(da == db, "{na} differs after resume");
    }
    assert_eq!(log_dice(&a), log_dice(&b));

    // `best` holds the highest validation Dice of the run, not the latest.
    let dice = log_dice(&a);
    let best: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("best.json")).unwrap()).unwrap();
    let max = dice.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(best["best_dice"].as_f64().unwrap(), max);
    assert_eq!(best["val_dice"].as_f64().unwrap(), max);
    let best_epoch = best["epoch"].as_u64().unwrap() as usize;
    assert_eq!(dice[best_epoch - 1], max);
}

#[test]
fn a_killed_run_resumes_and_finishes_with_a_valid_best_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let out = dir.path().join("run");
    let mut child =
        autopath().args(train_args(&data)).args(["--epochs", "2000", "--out", out.to_str().unwrap()]).spawn().unwrap();
    let start = Instant::now();
    while !out.join("last.json").exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let it get into the next epoch, then kill it hard.
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let last: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("last.json")).unwrap()).unwrap();
    let stopped = last["epoch"].as_u64().unwrap();
    assert!(stopped < 2000, "the run was stopped before the end");
    run(&["train".into(), "--quiet".into()], &["--resume", out.to_str().unwrap(), "--epochs", "6"]);
    let last: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("last.json")).unwrap()).unwrap();
    assert_eq!(last["epoch"], 6.max(stopped));
    let best: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("best.json")).unwrap()).unwrap();
    // Best is at least every validation Dice logged, across the killed and the resumed run (an epoch
    // killed between its checkpoint and its log line may be in best without a line), and is the
    // validation Dice of the checkpoint it names.
    let logged: Vec<f64> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_dice"].as_f64())
        .collect();
    assert!(!logged.is_empty());
    let best_dice = best["best_dice"].as_f64().unwrap();
    assert!(best_dice >= logged.iter().copied().fold(f64::MIN, f64::max) && best_dice <= 1.0);
    assert_eq!(best["val_dice"].as_f64(), Some(best_dice));
    assert!(tensors(&out.join("best.safetensors")).len() > 50);
    assert!(common::listing(&out).iter().all(|n| !n.starts_with(".tmp")), "{:?}", common::listing(&out));
}

#[test]
fn training_refuses_an_existing_run_folder_and_bad_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let out = dir.path().join("run");
    run(&train_args(&data), &["--epochs", "1", "--out", out.to_str().unwrap()]);
    let res =
        autopath().args(train_args(&data)).args(["--epochs", "1", "--out", out.to_str().unwrap()]).output().unwrap();
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("already holds a run"));
    // A truncated label file: the error names it.
    std::fs::write(data.join("segmentation-2.nii.gz"), b"\x1f\x8b\x08\x00").unwrap();
    let res = autopath()
        .args(train_args(&data))
        .args(["--epochs", "1", "--out", dir.path().join("r2").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success() && err.contains("segmentation-2.nii.gz") && !err.contains("panicked"), "{err}");
}

/// Without a usable GPU, `--device cuda` stops before any work with one line naming the cause, and
/// the default says which device it chose.
#[test]
fn cuda_without_a_gpu_fails_in_one_line_and_the_default_names_its_device() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data);
    let out = dir.path().join("run");
    let res = autopath()
        .args(train_args(&data))
        .args(["--epochs", "1", "--device", "cuda:0", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cuda:0") && (err.contains("no CUDA support") || err.contains("cannot be opened")), "{err}");
    assert!(!out.join("config.json").exists(), "nothing is written before the device opens");
    let res =
        autopath().args(train_args(&data)).args(["--epochs", "1", "--out", out.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success() && err.contains("device: cpu"), "{err}");
}
