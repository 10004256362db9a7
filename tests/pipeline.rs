//! Folder runs with several volumes in flight (`autopath-run --prefetch K`): outputs byte-identical to
//! a sequential run (volumes of odd sizes, one bad file in the middle that is reported while the others
//! complete), memory bounded by the volumes in flight, and output paths refused before any volume is
//! computed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn autopath(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopath")).args(args).output().unwrap();
    assert!(out.status.success(), "autopath {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopath-run")).args(args).output().unwrap()
}

/// `autopath-run` over `input` into `out` with `k` volumes in flight and a report.
fn folder_run(bundle: &Path, input: &Path, out: &Path, k: &str, report: &Path) -> std::process::Output {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (b, i, o, r) = (path(bundle), path(input), path(out), path(report));
    run(&["--bundle", &b, "-i", &i, "-o", &o, "--prefetch", k, "--report", &r, "--quiet"])
}

/// `cases` synthetic volumes of `size` (D,H,W) in `dir`, named `{prefix}-N.nii.gz`.
fn volumes(dir: &Path, scratch: &Path, size: &str, cases: usize, prefix: &str) {
    let synth = scratch.join(format!("synth-{prefix}"));
    let (s, c) = (synth.to_str().unwrap(), cases.to_string());
    autopath(&["synth", "--quiet", "--cases", &c, "--size", size, "--seed", "3", "--out", s]);
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..cases {
        std::fs::copy(synth.join(format!("volume-{i}.nii.gz")), dir.join(format!("{prefix}-{i}.nii.gz"))).unwrap();
    }
}

fn report_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn pipelined_outputs_are_the_sequential_bytes_and_a_bad_file_is_reported_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bundle) = common::trained_bundle(dir.path());
    let inputs = dir.path().join("inputs");
    // Odd sizes, one smaller than the 16×32×32 tile in depth (padded), and a bad file in the middle.
    volumes(&inputs, dir.path(), "19,47,41", 3, "a");
    volumes(&inputs, dir.path(), "13,40,33", 2, "c");
    std::fs::write(inputs.join("b-bad.nii.gz"), b"not a NIfTI file").unwrap();
    let mut outputs = Vec::new();
    for k in ["1", "3"] {
        let (out, report) = (dir.path().join(format!("out-{k}")), dir.path().join(format!("report-{k}.jsonl")));
        let o = folder_run(&bundle, &inputs, &out, k, &report);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "one failure exits 1: {stderr}");
        assert!(stderr.contains("b-bad.nii.gz"), "{stderr}");
        let lines = report_lines(&report);
        // One line per input, in input order, then the summary.
        let names: Vec<String> = lines[..6]
            .iter()
            .map(|l| Path::new(l["input"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a-0.nii.gz", "a-1.nii.gz", "a-2.nii.gz", "b-bad.nii.gz", "c-0.nii.gz", "c-1.nii.gz"]);
        assert!(lines[3]["error"].as_str().unwrap().contains("b-bad.nii.gz"), "{}", lines[3]);
        let summary = &lines[6]["summary"];
        assert_eq!((summary["segmented"].as_u64(), summary["failed"].as_u64()), (Some(5), Some(1)));
        assert_eq!(summary["prefetch"].as_u64(), Some(k.parse().unwrap()));
        assert!(
            summary["wall_seconds"].as_f64().unwrap() > 0.0 && summary["volumes_per_second"].as_f64().unwrap() > 0.0
        );
        for l in lines.iter().take(6).filter(|l| l.get("error").is_none()) {
            assert!(l["seconds"]["wall"].as_f64().unwrap() > 0.0, "{l}");
        }
        outputs.push(files(&out));
    }
    assert_eq!(outputs[0].len(), 5);
    assert!(outputs[0] == outputs[1], "outputs with 3 volumes in flight differ from the sequential run's");
}

/// Summary line of a run's report.
fn summary(report: &Path) -> serde_json::Value {
    report_lines(report).pop().unwrap()["summary"].clone()
}

#[test]
fn memory_stays_within_the_volumes_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, bundle) = common::trained_bundle(dir.path());
    let (one, eight) = (dir.path().join("one"), dir.path().join("eight"));
    volumes(&eight, dir.path(), "64,192,192", 8, "v");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::copy(eight.join("v-0.nii.gz"), one.join("v-0.nii.gz")).unwrap();
    let growth = |input: &PathBuf, k: &str| {
        let report = dir.path().join(format!("report-{k}-{}.jsonl", input.file_name().unwrap().to_string_lossy()));
        let out = dir.path().join(format!("out-{k}"));
        let o = folder_run(&bundle, input, &out, k, &report);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s = summary(&report);
        s["peak_rss_mb"].as_f64().unwrap() - s["rss_at_start_mb"].as_f64().unwrap()
    };
    let per_volume = growth(&one, "1");
    let k = 2;
    let eight_volumes = growth(&eight, &k.to_string());
    eprintln!("one volume: +{per_volume:.0} MB; 8 volumes, {k} in flight: +{eight_volumes:.0} MB");
    assert!(per_volume > 20.0, "a 64×192×192 volume should cost tens of MB, measured {per_volume:.0}");
    assert!(
        eight_volumes <= (k + 1) as f64 * per_volume,
        "8 volumes with {k} in flight grew {eight_volumes:.0} MB; one volume's worth is {per_volume:.0} MB"
    );
}

#[test]
fn output_paths_are_refused_before_any_volume_is_computed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let input = data.join("volume-0.nii.gz");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"x").unwrap();
    let b = bundle.to_str().unwrap();
    let report = dir.path().join("report.jsonl");
    let r = report.to_str().unwrap();
    let refused = |args: &[&str], why: &str| {
        let t = std::time::Instant::now();
        let o = run(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        // Refused before the bundle loads: nothing was segmented, no report was started.
        assert!(!report.exists() || std::fs::read_to_string(&report).unwrap().is_empty(), "{args:?}");
        t.elapsed()
    };
    let under_file = a_file.join("seg.nii.gz");
    refused(
        &["--bundle", b, "-i", input.to_str().unwrap(), "-o", under_file.to_str().unwrap(), "--report", r],
        "is a file",
    );
    refused(&["--bundle", b, "-i", data.to_str().unwrap(), "-o", a_file.to_str().unwrap(), "--report", r], "is a file");
    let txt = dir.path().join("seg.txt");
    refused(&["--bundle", b, "-i", input.to_str().unwrap(), "-o", txt.to_str().unwrap()], ".nii or .nii.gz");
    refused(&["--bundle", b, "-i", input.to_str().unwrap(), "-o", input.to_str().unwrap()], "the input itself");
    let bad_report = a_file.join("r.jsonl");
    let out = dir.path().join("never.nii.gz");
    refused(
        &[
            "--bundle",
            b,
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--report",
            bad_report.to_str().unwrap(),
        ],
        "--report",
    );
    assert!(!out.exists());
    // A bad audit fraction is refused before any output folder is made.
    let untouched = dir.path().join("untouched");
    refused(
        &["--bundle", b, "-i", data.to_str().unwrap(), "-o", untouched.to_str().unwrap(), "--audit=-0.5"],
        "--audit",
    );
    assert!(!untouched.exists());
    // A missing parent is created.
    let nested = dir.path().join("missing").join("dir").join("seg.nii.gz");
    let o = run(&["--bundle", b, "-i", input.to_str().unwrap(), "-o", nested.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(nested.exists());
    // A folder that does not take files: only testable without root's override of permissions.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    if std::fs::write(locked.join("probe"), b"x").is_ok() {
        // Straight to the terminal: the test harness hides what passing tests print.
        let line = "SKIPPED: a not-writable output folder (running as root: permissions do not stop writes)\n";
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    } else {
        let target = locked.join("seg.nii.gz");
        refused(&["--bundle", b, "-i", input.to_str().unwrap(), "-o", target.to_str().unwrap()], "not writable");
    }
}

#[test]
fn blending_while_the_next_batch_runs_gives_the_same_bytes() {
    // What GPU providers do (submit the next tile batch, then blend the previous one), forced on the CPU.
    use autopath::deploy::{PathChoice, Predictor, PredictorOptions};
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let input = data.join("volume-0.nii.gz");
    let outputs: Vec<Vec<u8>> = [false, true]
        .iter()
        .map(|&overlap| {
            let opts = PredictorOptions { overlap_blend: Some(overlap), tile_batch: 1, ..Default::default() };
            let p = Predictor::from_bundle(&bundle, &opts).unwrap();
            let out = dir.path().join(format!("overlap-{overlap}.nii.gz"));
            let r = p
                .segment_file(&input, &out, &PathChoice::Mask(vec![true, false, true, true, false, true, true, true]))
                .unwrap();
            assert!(r.tiles > 2, "several batches: {} tiles", r.tiles);
            std::fs::read(&out).unwrap()
        })
        .collect();
    assert!(outputs[0] == outputs[1], "blending overlapped with the network changed the output");
}

/// Volumes in flight by default: at most 3 with the network on the CPU's cores, and with it on a GPU
/// at least as many, at most half the cores up to 8 (memory permitting: these are small volumes).
#[test]
fn the_default_in_flight_bound_follows_where_the_network_runs() {
    use autopath::input::source::Source;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    volumes(&data, &dir.path().join("scratch"), "20,48,44", 2, "volume");
    let pairs: Vec<(Source, PathBuf)> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| (Source::Nifti(e.unwrap().path()), dir.path().join("out.nii.gz")))
        .collect();
    let read = autopath::input::volume::ReadOptions::default();
    let cpu = autopath::deploy::batch::default_prefetch(&pairs, &read, 1, false);
    let gpu = autopath::deploy::batch::default_prefetch(&pairs, &read, 1, true);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(cpu, 3, "small volumes: the CPU bound");
    assert_eq!(gpu, (cores / 2).clamp(3, 8), "small volumes on {cores} cores: the GPU bound");
}
