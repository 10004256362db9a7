//! `autopath device-check --device cpu`, run as a user runs it: the composed path (the code CUDA runs)
//! against the CPU kernels, every operator shape and training steps taken from the same weights. In its
//! own process, because the composed path is switched on for a whole process.

use std::process::Command;

#[test]
fn the_composed_path_trains_like_the_cpu_kernels_from_the_same_weights() {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["device-check", "--device", "cpu", "--steps", "8"])
        .output()
        .expect("autopath runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}\n{}", String::from_utf8_lossy(&out.stderr));
    let value = |row: &str| -> f64 {
        let line = table.lines().find(|l| l.contains(row)).unwrap_or_else(|| panic!("no row `{row}` in\n{table}"));
        line.split('|').nth(2).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no value in `{line}`"))
    };
    // One forward pass from the same weights: rounding only (3.6e-7 measured over 30 steps).
    assert!(value("from the CPU run's weights: worst loss") <= 1e-4, "{table}");
    // Single steps spike when a near-tie routes a gradient differently (measured once: 5 of 12 steps at
    // 3e-3–8e-2 against the composed path, while the two CPU kernel families agreed within 2.3e-4 on
    // every one of them); the median of 8 tolerates 3 such steps, that of 3 only one.
    assert!(value("from the CPU run's weights: median gradient") <= 1e-3, "{table}");
    assert!(value("conv 3³ stride 1: weight gradient") <= 1e-5, "{table}");
    // bf16 convolutions (`train --precision bf16`), emulated on the CPU by rounding the operands to
    // bf16: off the f32 kernels by bf16's rounding (1.6e-3–3.6e-3 measured), not more, not less.
    for grad in ["output", "input gradient", "weight gradient"] {
        let v = value(&format!("conv 3³ stride 1 (bf16): {grad}"));
        assert!((1e-4..=2e-2).contains(&v), "bf16 {grad}: {v}\n{table}");
    }
    assert!(!table.contains("FAIL"), "{table}");
}

/// A reduced training precision is for CUDA: on the CPU it is refused before a run folder is made.
#[test]
fn bf16_training_on_the_cpu_is_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["train", "--device", "cpu", "--data", dir.path().to_str().expect("utf-8"), "--out"])
        .arg(&run)
        .args(["--precision", "bf16"])
        .output()
        .expect("autopath runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bf16 is for CUDA"), "{err}");
    assert!(!run.exists(), "a run folder was made");
}
