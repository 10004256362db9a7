//! The path evaluator behind `eval` and policy training: spreading a volume's tile batches over
//! single-threaded session sets, answering a path asked again from the volume's memory, and sharing
//! the split head's low-level part between paths must give what one session set computing every
//! batch in turn with the whole head gives.

mod common;

use autopath::study::dataset::Dataset;
use autopath::study::path_eval::PathEvaluator;
use autopath::study::train::data::load_sample;
use autopath::study::train::segment::TrainConfig;
use autopath_bundle::Bundle;

/// A trained segmenter's bundle and data, and evaluators of 1 and 3 session sets over it with
/// `tile_batch` tiles per call.
struct Setup {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    cfg: TrainConfig,
    one: PathEvaluator,
    three: PathEvaluator,
    blocks: usize,
}

fn setup(tile_batch: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (data, run, bundle) = common::trained_bundle(dir.path());
    let cfg: TrainConfig = autopath::study::train::checkpoint::read_json(&run.join("config.json")).unwrap();
    let bundle = Bundle::load(&bundle).unwrap();
    let cpu = autopath::deploy::SessionOptions::default();
    let one = PathEvaluator::with_workers(&bundle, cfg.window, tile_batch, 1, &cpu).unwrap();
    let three = PathEvaluator::with_workers(&bundle, cfg.window, tile_batch, 3, &cpu).unwrap();
    Setup { _dir: dir, data, cfg, one, three, blocks: bundle.manifest.architecture.blocks.len() }
}

#[test]
fn parallel_workers_and_remembered_paths_give_the_sequential_outcomes() {
    // One tile per batch: 8 batches per volume, spread unevenly over 3 workers.
    let Setup { _dir, data, cfg, mut one, mut three, blocks: n } = setup(1);
    let mask = |dropped: &[usize]| (0..n).map(|b| !dropped.contains(&b)).collect::<Vec<bool>>();
    // Repeats inside one call, a dropped block with a projection shortcut (2), one without (0, 7).
    let masks = vec![mask(&[]), mask(&[0]), mask(&[2]), mask(&[0, 7]), mask(&[]), mask(&[0])];
    let ds = Dataset::open(&data, None).unwrap();
    let mut distinct = 0;
    for case in &ds.cases {
        let s = load_sample(case, &cfg.preprocessing).unwrap();
        let p1 = one.prepare(&s.image, s.record.pad_value, Some(s.labels.clone())).unwrap();
        let p3 = three.prepare(&s.image, s.record.pad_value, Some(s.labels.clone())).unwrap();
        // Sequential, each path run for its prediction (nothing remembered is used).
        let want = one.evaluate(&p1, &masks, true).unwrap();
        // Parallel, remembered: the repeats of this call, then every path again.
        let got = three.evaluate(&p3, &masks, false).unwrap();
        let again = three.evaluate(&p3, &masks, false).unwrap();
        let predicted = three.evaluate(&p3, &masks[..4], true).unwrap();
        for (i, w) in want.iter().enumerate() {
            for (what, g) in [("parallel", &got[i]), ("remembered", &again[i])] {
                assert!(
                    (g.dice - w.dice).abs() < 1e-6,
                    "case {} path {i} {what}: Dice {} vs {}",
                    case.id,
                    g.dice,
                    w.dice
                );
                assert!((g.accuracy - w.accuracy).abs() < 1e-6, "case {} path {i} {what}", case.id);
                assert!(g.prediction.is_none(), "predictions are given only when asked for");
            }
        }
        for (i, g) in predicted.iter().enumerate() {
            let (a, b) = (want[i].prediction.as_ref().unwrap(), g.prediction.as_ref().unwrap());
            let differ = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
            assert!(differ * 10_000 <= a.len(), "case {} path {i}: {differ} of {} voxels differ", case.id, a.len());
        }
        distinct += want.iter().filter(|o| (o.dice - want[0].dice).abs() > 1e-9).count();
    }
    // Not a trivial case: a path that answered with another path's outcome would be seen.
    assert!(distinct > 0, "every path scored the same on every volume");
}

/// `eval` and policy training hand whole volumes to the session sets: each set prepares and scores its
/// volumes itself. The outcomes are the sequential ones, in item order; a volume's error is returned
/// and the evaluator keeps every session set for the next call.
#[test]
fn volumes_spread_over_the_session_sets_give_the_sequential_outcomes_in_order() {
    let Setup { _dir, data, cfg, mut one, mut three, blocks: n } = setup(2);
    let masks: Vec<Vec<bool>> = (0..n).map(|d| (0..n).map(|b| b != d).collect()).chain([vec![true; n]]).collect();
    let ds = Dataset::open(&data, None).unwrap();
    let samples: Vec<_> = ds.cases.iter().map(|c| load_sample(c, &cfg.preprocessing).unwrap()).collect();
    assert!(samples.len() >= 4, "more volumes than session sets");
    let score = |ev: &mut PathEvaluator, s: &autopath::study::train::data::Sample| {
        let p = ev.prepare(&s.image, s.record.pad_value, Some(s.labels.clone()))?;
        Ok(ev.evaluate(&p, &masks, false)?.iter().map(|o| o.dice).collect::<Vec<f64>>())
    };
    let want: Vec<Vec<f64>> = samples.iter().map(|s| score(&mut one, s).unwrap()).collect();
    for round in 0..2 {
        let got = three.per_volume(samples.iter().collect(), |ev, s| score(ev, s)).unwrap();
        assert_eq!(got.len(), want.len());
        for (v, (g, w)) in got.iter().zip(&want).enumerate() {
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert!((a - b).abs() < 1e-6, "round {round}, volume {v}, path {i}: Dice {a} vs {b}");
            }
        }
        let failed = three.per_volume((0..7).collect(), |_, i| {
            if i == 3 {
                Err(autopath::error::Error::invalid("volume", "number 3 is bad"))
            } else {
                Ok(i)
            }
        });
        assert!(failed.is_err_and(|e| e.to_string().contains("number 3 is bad")));
    }
    assert_eq!(
        three.per_volume((0..9).collect(), |_, i| Ok(i * i)).unwrap(),
        (0..9).map(|i| i * i).collect::<Vec<_>>()
    );
    // Labels that do not match their image are refused, not read out of bounds.
    let s = &samples[0];
    let (d, h, w) = s.labels.dim();
    let short = s.labels.slice(ndarray::s![..d, ..h - 1, ..w]).to_owned();
    let err = three.prepare(&s.image, s.record.pad_value, Some(short)).err().expect("mismatched labels refused");
    assert!(err.to_string().contains("labels") && err.to_string().contains("differs"), "{err}");
}

#[test]
fn eval_refuses_zero_workers_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["eval", "--seg", dir.path().to_str().unwrap(), "--out", dir.path().join("eval").to_str().unwrap()])
        .args(["--workers", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--workers") && !err.contains("panicked"), "{err}");
    assert!(!dir.path().join("eval").exists(), "nothing written for a refused command");
}

/// A run asked for the CUDA provider that this ONNX Runtime library lacks: it failed, saying what to do.
fn assert_missing_cuda_is_a_clear_error(res: &std::process::Output) {
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{err}");
    assert!(err.contains("Cuda unavailable") && err.contains("--allow-fallback") && !err.contains("panicked"), "{err}");
}

/// `eval` and `train-policy` take the runtime's provider flags: a GPU provider whose library is missing
/// is an error that says what to do, and with `--allow-fallback` they run on the CPU with the CPU's
/// results. A refused `train-policy` leaves nothing that stops the same command from running again.
#[test]
fn a_missing_gpu_provider_is_an_error_for_eval_and_train_policy_unless_fallback_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, run, _) = common::trained_bundle(dir.path());
    let autopath = |command: &str, out: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_autopath"))
            .args([command, "--quiet", "--seg", run.to_str().unwrap()])
            .args(["--out", dir.path().join(out).to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let eval = |out: &str, extra: &[&str]| autopath("eval", out, &[&["--random-repeats", "2"], extra].concat());
    assert_missing_cuda_is_a_clear_error(&eval("cuda", &["--ep", "cuda"]));
    assert!(!dir.path().join("cuda").join("results.json").exists());

    let res = eval("fallback", &["--ep", "cuda", "--allow-fallback"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let res = eval("cpu", &[]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let read = |out: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(out).join("results.json")).unwrap()).unwrap()
    };
    let (fallback, cpu) = (read("fallback"), read("cpu"));
    let volumes = cpu["volumes"].as_array().unwrap();
    assert!(!volumes.is_empty());
    for (a, b) in fallback["volumes"].as_array().unwrap().iter().zip(volumes) {
        assert_eq!(a["id"], b["id"]);
        for key in ["full", "drop_n", "drop_first", "drop_last"] {
            let (x, y) = (a[key].clone(), b[key].clone());
            let (x, y): (Vec<f64>, Vec<f64>) = match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (vec![x], vec![y]),
                _ => (serde_json::from_value(x).unwrap(), serde_json::from_value(y).unwrap()),
            };
            assert_eq!(x.len(), y.len());
            for (p, q) in x.iter().zip(&y) {
                assert!((p - q).abs() < 1e-6, "volume {} {key}: {p} vs {q}", b["id"]);
            }
        }
    }

    let train =
        |extra: &[&str]| autopath("train-policy", "policy", &[&["--device", "cpu", "--epochs", "2"], extra].concat());
    assert_missing_cuda_is_a_clear_error(&train(&["--ep", "cuda"]));
    assert!(!dir.path().join("policy").join("best.safetensors").exists());
    // The same folder, now with fallback: a new run, not "already holds a run".
    let res = train(&["--ep", "cuda", "--allow-fallback"]);
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(dir.path().join("policy").join("best.safetensors").exists());
}

/// With the head split at the skip decoder's low-level part (the bundles `eval` and `train-policy`
/// compile for the CPU), paths that agree on the blocks before the low-level features share that
/// part; every path scores as with the whole head, in any order of the paths.
#[test]
fn paths_sharing_the_split_heads_low_level_part_score_as_with_the_whole_head() {
    use autopath::study::compile::CompileOptions;
    use autopath::study::packaging::compile_runs;
    let dir = tempfile::tempdir().unwrap();
    let (data, run, _) = common::trained_bundle(dir.path());
    let cfg: TrainConfig = autopath::study::train::checkpoint::read_json(&run.join("config.json")).unwrap();
    let cpu = CompileOptions::for_provider(autopath::deploy::ExecutionProvider::Cpu);
    let open = |name: &str, split_head: bool| {
        let out = dir.path().join(name);
        compile_runs(&run, "best", None, None, &out, CompileOptions { split_head, ..cpu.clone() }).unwrap();
        let bundle = Bundle::load(&out).unwrap();
        let low = bundle.manifest.architecture.low_level.clone().expect("the skip decoder");
        assert_eq!(low.split.is_some(), split_head, "{name}: the split head in the manifest");
        let ev = PathEvaluator::with_workers(&bundle, cfg.window, 2, 1, &Default::default()).unwrap();
        (ev, low.after_block, bundle.manifest.architecture.blocks.len())
    };
    let (mut whole, after, n) = open("whole", false);
    let (mut split, _, _) = open("split", true);
    // Every combination of the blocks up to the low-level features, each with two different later
    // parts, visited in an order that keeps changing the early blocks.
    let mut masks = Vec::new();
    for later in [vec![true; n - after - 1], (after + 1..n).map(|b| b % 2 == 0).collect()] {
        for early in 0..1usize << (after + 1) {
            masks.push((0..=after).map(|b| early >> b & 1 == 0).chain(later.iter().copied()).collect::<Vec<bool>>());
        }
    }
    masks.reverse();
    let ds = Dataset::open(&data, None).unwrap();
    for case in &ds.cases[..2] {
        let s = load_sample(case, &cfg.preprocessing).unwrap();
        let pw = whole.prepare(&s.image, s.record.pad_value, Some(s.labels.clone())).unwrap();
        let ps = split.prepare(&s.image, s.record.pad_value, Some(s.labels.clone())).unwrap();
        let want = whole.evaluate(&pw, &masks, true).unwrap();
        let got = split.evaluate(&ps, &masks, false).unwrap();
        let predicted = split.evaluate(&ps, &masks, true).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                (g.dice - w.dice).abs() < 1e-6,
                "case {} path {:?}: Dice {} vs {}",
                case.id,
                masks[i],
                g.dice,
                w.dice
            );
            assert!((g.accuracy - w.accuracy).abs() < 1e-6, "case {} path {:?}", case.id, masks[i]);
            let (a, b) = (w.prediction.as_ref().unwrap(), predicted[i].prediction.as_ref().unwrap());
            let differ = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
            assert!(differ * 10_000 <= a.len(), "case {} path {i}: {differ} of {} voxels differ", case.id, a.len());
        }
        // Not a trivial case: the early blocks change the outcome.
        assert!(
            want.iter().any(|o| (o.dice - want[0].dice).abs() > 1e-9),
            "case {}: every path scored the same",
            case.id
        );
    }
}
