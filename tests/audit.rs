//! Audit runs (`--audit F`): the same volumes are audited on every run, the reported agreement is the
//! Dice of the path's labels against the full network's, and below `--audit-min` the answer is the full
//! network's labels, from the batch CLI and from the service alike.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use autopath::input::volume::{read_volume, ReadOptions};

const PATH: &str = "10110101";

fn run(args: &[&str]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_autopath-run")).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Per input file name, the report line's `audit` (null when not audited).
fn audits(report: &Path) -> BTreeMap<String, serde_json::Value> {
    std::fs::read_to_string(report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l.get("input").is_some())
        .map(|l| {
            let name = Path::new(l["input"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (name, l["audit"].clone())
        })
        .collect()
}

fn labels(path: &Path) -> Vec<u8> {
    read_volume(path, &ReadOptions::default()).unwrap().data.iter().map(|&v| v as u8).collect()
}

/// Foreground Dice as the runtime defines it: (2|A∩B| + 1e-5) / (|A| + |B| + 1e-5).
fn dice(a: &[u8], b: &[u8]) -> f64 {
    let both = a.iter().zip(b).filter(|(x, y)| **x > 0 && **y > 0).count() as f64;
    let (na, nb) = (a.iter().filter(|x| **x > 0).count() as f64, b.iter().filter(|x| **x > 0).count() as f64);
    (2.0 * both + 1e-5) / (na + nb + 1e-5)
}

#[test]
fn audits_pick_the_same_volumes_and_report_the_dice_against_the_full_network() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _, bundle) = common::trained_bundle(dir.path());
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for i in 0..5 {
        let name = format!("volume-{i}.nii.gz");
        std::fs::copy(data.join(&name), images.join(&name)).unwrap();
    }
    let (b, i) = (bundle.to_str().unwrap(), images.to_str().unwrap());
    let batch = |name: &str, extra: &[&str]| {
        let (out, report) = (dir.path().join(name), dir.path().join(format!("{name}.jsonl")));
        let mut args = vec!["--bundle", b, "-i", i, "-o", out.to_str().unwrap(), "--path", PATH, "--quiet"];
        args.extend(["--report", report.to_str().unwrap()]);
        args.extend(extra);
        run(&args);
        (out, audits(&report))
    };
    // The same half of the volumes, whatever the run and the volumes in flight.
    let (_, first) = batch("half-1", &["--audit", "0.5", "--prefetch", "1"]);
    let (_, second) = batch("half-2", &["--audit", "0.5", "--prefetch", "3"]);
    let picked = |a: &BTreeMap<String, serde_json::Value>| -> Vec<String> {
        a.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k.clone()).collect()
    };
    assert_eq!(picked(&first), picked(&second));
    assert!((1..5).contains(&picked(&first).len()), "0.5 of 5 volumes audited {:?}", picked(&first));

    // Every volume audited, every answer the full network's; against the path's own labels.
    let (path_out, none) = batch("path", &[]);
    assert!(none.values().all(|v| v.is_null()), "no audit without --audit");
    let (full_out, all) = batch("full", &["--audit", "1", "--audit-min", "1.01"]);
    for (name, a) in &all {
        assert_eq!(a["answered_full"], true, "{name}: {a}");
        assert!(a["seconds"].as_f64().unwrap() > 0.0);
        let want = dice(&labels(&path_out.join(name)), &labels(&full_out.join(name)));
        let got = a["agreement"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-12, "{name}: reported {got}, Dice of the two label maps {want}");
    }
    // With the bar at 0 the path's labels are kept.
    let (kept_out, kept) = batch("kept", &["--audit", "1", "--audit-min", "0"]);
    for name in kept.keys() {
        assert_eq!(kept[name]["answered_full"], false);
        assert_eq!(labels(&kept_out.join(name)), labels(&path_out.join(name)), "{name}");
    }

    // The service: the answer below the bar is the full network's labels, and it says so.
    let (mut child, addr) = common::spawn_server(Command::new(env!("CARGO_BIN_EXE_autopath-run")).args([
        "serve",
        "--bundle",
        b,
        "--addr",
        "127.0.0.1:0",
        "--audit",
        "1",
        "--audit-min",
        "1.01",
    ]));
    let body = std::fs::read(images.join("volume-1.nii.gz")).unwrap();
    let (status, headers, nifti) = common::http(&addr, "POST", &format!("/v1/segment?path={PATH}"), &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&nifti));
    assert_eq!(common::header(&headers, "x-autopath-answered"), Some("full"));
    let served = dir.path().join("served.nii.gz");
    std::fs::write(&served, &nifti).unwrap();
    assert_eq!(labels(&served), labels(&full_out.join("volume-1.nii.gz")));
    let (_, _, metrics) = common::http(&addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("autopath_audit_agreement_count 1"), "{metrics}");
    assert!(metrics.contains("autopath_audit_full_answers_total 1"), "{metrics}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}
