//! `autopath demo --quick`: every stage runs and leaves what a user is told to look at.

mod common;

use std::process::Command;

#[test]
fn quick_demo_runs_every_stage_and_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_autopath"))
            .args(["demo", "--quick", "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&first.stderr));
    for needle in [
        "Table 1",
        "Full backbone",
        "DropFirstN",
        "DropLastN",
        "DropRandomN",
        "AutoPath",
        "Speed-up of AutoPath over full.onnx",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    for f in [
        "eval/report.md",
        "eval/results.json",
        "eval/fig3_drop_n.svg",
        "bundle/manifest.json",
        "bundle/policy.onnx",
        "bench/bench.json",
        "bench/bench.md",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The network calls are timed inside the sliding window, so they are part of it, never more.
    let bench: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bench/bench.json")).unwrap()).unwrap();
    for v in bench["volumes"].as_array().unwrap() {
        for (net, window) in [("full_network", "full_graph"), ("autopath_network", "autopath")] {
            let (n, w) = (v[net]["median"].as_f64().unwrap(), v[window]["median"].as_f64().unwrap());
            assert!(n > 0.0 && n <= w, "{net} {n} s against {window} {w} s");
        }
    }
    // Every test volume got a segmentation with its geometry.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/results.json")).unwrap()).unwrap();
    let ids: Vec<String> =
        results["test_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!(!ids.is_empty());
    let files: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            [out.join(format!("segmentations/volume-{id}.nii.gz")), out.join(format!("data/volume-{id}.nii.gz"))]
        })
        .map(|p| p.display().to_string())
        .collect();
    let seen = common::python_json("nifti_inspect.py", &files.iter().map(String::as_str).collect::<Vec<_>>());
    for pair in files.chunks(2) {
        assert_eq!(seen[&pair[0]]["affine"], seen[&pair[1]]["affine"]);
        assert_eq!(seen[&pair[0]]["shape"], seen[&pair[1]]["shape"]);
    }
    // Table 1 in results.json agrees with the per-volume numbers.
    let vols = results["volumes"].as_array().unwrap();
    let mean_full = vols.iter().map(|v| v["full"].as_f64().unwrap()).sum::<f64>() / vols.len() as f64;
    assert!((results["table1"][0]["dice"].as_f64().unwrap() - mean_full).abs() < 1e-12);
    // Both policies are evaluated, and each per-volume oracle agrees with the mask it names and the
    // summary (N = 8: every path scored).
    assert_eq!(results["policies"], serde_json::json!(["AutoPath (distil)", "AutoPath (paper RL)"]));
    let n = results["blocks"].as_u64().unwrap() as usize;
    for v in vols {
        for oracle in ["oracle", "tolerance_oracle"] {
            let o = &v[oracle];
            let mask = o["mask"].as_str().unwrap();
            assert_eq!(mask.len(), n);
            assert_eq!(o["dropped"].as_u64().unwrap() as usize, mask.matches('0').count());
            if mask == "1".repeat(n) {
                assert_eq!(o["dice"].as_f64().unwrap(), v["full"].as_f64().unwrap());
            }
            for p in v["autopath"].as_array().unwrap() {
                if p["mask"].as_str() == Some(mask) {
                    assert_eq!(o["dice"].as_f64().unwrap(), p["dice"].as_f64().unwrap());
                }
            }
        }
        // The tolerance oracle is within the tolerance of the full network on its volume.
        let tol = results["summary"]["dice_tolerance"].as_f64().unwrap();
        assert!(v["tolerance_oracle"]["dice"].as_f64().unwrap() >= v["full"].as_f64().unwrap() - tol);
    }
    // The trust analysis: per policy, each volume's margin and loss as the per-volume results give them;
    // the guard, calibrated like the bundle's, trips on none of the phantoms' test volumes.
    let trust = &results["trust"];
    assert_eq!(trust["guard_distance"].as_array().unwrap().len(), vols.len());
    for (i, p) in trust["policies"].as_array().unwrap().iter().enumerate() {
        let t = p["threshold"].as_f64().unwrap();
        for (j, v) in vols.iter().enumerate() {
            let path = &v["autopath"][i];
            let margin = path["probabilities"].as_array().unwrap().iter().map(|q| (q.as_f64().unwrap() - t).abs());
            assert!((p["margins"][j].as_f64().unwrap() - margin.fold(f64::INFINITY, f64::min)).abs() < 1e-6);
            let loss = v["full"].as_f64().unwrap() - path["dice"].as_f64().unwrap();
            assert!((p["losses"][j].as_f64().unwrap() - loss).abs() < 1e-12);
        }
        assert_eq!(p["tripped"], 0);
        assert_eq!(p["worst_loss"], p["worst_loss_guarded"]);
    }
    let guard = &manifest_guard(&out);
    assert_eq!(trust["guard_bound"], guard["bound"], "eval calibrates the guard as compile does");
    let mean_oracle = vols.iter().map(|v| v["oracle"]["dice"].as_f64().unwrap()).sum::<f64>() / vols.len() as f64;
    assert!((results["summary"]["oracle"]["dice"].as_f64().unwrap() - mean_oracle).abs() < 1e-12);
    let budget = &std::fs::read_to_string(out.join("bundle/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(budget).unwrap();
    let curve = manifest["policy"]["budget"].as_array().unwrap();
    assert!(curve.len() >= 2, "budget calibration {curve:?}");
    assert!(out.join("eval/fig_pareto.svg").exists() || !out.join("eval/fig3_drop_n.svg").exists());
    eval_against_measured_time(&out);
    // The second run reuses every stage.
    let second = run();
    assert!(second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(err.matches("reusing finished stage").count(), 8, "{err}");
    // The two policies trained side by side in the first run; the paper's, trained again alone (its
    // folder removed), comes out the same to the bit, and only it and the stages after it run again.
    let paper = out.join("policy-paper");
    let side_by_side = std::fs::read(paper.join("last.safetensors")).unwrap();
    std::fs::remove_dir_all(&paper).unwrap();
    let third = run();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(third.status.success(), "{err}");
    assert_eq!(err.matches("reusing finished stage").count(), 3, "{err}");
    assert!(
        std::fs::read(paper.join("last.safetensors")).unwrap() == side_by_side,
        "paper policy differs when trained alone"
    );
}

/// The bundle's guard entry.
fn manifest_guard(out: &std::path::Path) -> serde_json::Value {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("bundle/manifest.json")).unwrap()).unwrap();
    m["policy"]["guard"].clone()
}

/// `eval --cost`: with the bundle's graphs timed by `bench --calibrate`, each policy's time fraction at
/// its threshold is the mean over the test volumes of its path's time (stem, head, kept blocks,
/// dropped blocks' projection shortcuts) over the full network's, computed here from cost.json, and the
/// report draws the figure against measured time.
fn eval_against_measured_time(out: &std::path::Path) {
    let cal = out.join("calibrate");
    let eval = out.join("eval-timed");
    let (bundle, cost) = (out.join("bundle"), cal.join("cost.json"));
    common::autopath(&[
        "bench",
        "--bundle",
        bundle.to_str().unwrap(),
        "--calibrate",
        "--repeats",
        "1",
        "--out",
        cal.to_str().unwrap(),
    ]);
    common::autopath(&[
        "eval",
        "--quiet",
        "--seg",
        out.join("seg").to_str().unwrap(),
        "--policy",
        out.join("policy").to_str().unwrap(),
        "--random-repeats",
        "5",
        "--out",
        eval.to_str().unwrap(),
        "--cost",
        cost.to_str().unwrap(),
    ]);
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cost).unwrap()).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(eval.join("results.json")).unwrap()).unwrap();
    let ms = |v: &serde_json::Value| v.as_f64().unwrap();
    let blocks = c["blocks"].as_array().unwrap();
    let time = |mask: &str| {
        let kept =
            mask.chars().zip(blocks).map(|(k, b)| if k == '1' { ms(&b["kept_ms"]) } else { ms(&b["shortcut_ms"]) });
        ms(&c["stem_ms"]) + ms(&c["head_ms"]) + kept.sum::<f64>()
    };
    let full = time(&"1".repeat(blocks.len()));
    let vols = r["volumes"].as_array().unwrap();
    let want =
        vols.iter().map(|v| time(v["autopath"][0]["mask"].as_str().unwrap()) / full).sum::<f64>() / vols.len() as f64;
    let got = ms(&r["measured_time"]["chosen"][0]);
    assert!((got - want).abs() < 1e-6, "time fraction {got}, from cost.json {want}");
    assert!(eval.join("fig_pareto_time.svg").exists());
    let report = std::fs::read_to_string(eval.join("report.md")).unwrap();
    assert!(report.contains("of the full network's measured time"), "{report}");
}
