//! `autopath synth`: phantoms open in nibabel with the stated geometry, have realistic HU per tissue,
//! and spread over a range of difficulty.

mod common;

use std::process::Command;

use autopath::input::volume::{read_volume, ReadOptions};
use autopath::study::synth::PhantomInfo;

fn synth(out: &std::path::Path, seed: u64) {
    let status = Command::new(env!("CARGO_BIN_EXE_autopath"))
        .args(["synth", "--quiet", "--cases", "6", "--size", "24,64,64", "--seed", &seed.to_string(), "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let s = (v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
    (m, s)
}

#[test]
fn phantoms_have_realistic_tissue_values_geometry_and_a_difficulty_spread() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 5);
    let infos: Vec<PhantomInfo> =
        serde_json::from_slice(&std::fs::read(dir.path().join("phantoms.json")).unwrap()).unwrap();
    assert_eq!(infos.len(), 6);

    // nibabel: shapes (i, j, k), affines with the drawn spacing, label values.
    let files: Vec<String> = (0..6)
        .flat_map(|k| [format!("volume-{k}.nii.gz"), format!("segmentation-{k}.nii.gz")])
        .map(|n| dir.path().join(n).display().to_string())
        .collect();
    let seen = common::python_json("nifti_inspect.py", &files.iter().map(String::as_str).collect::<Vec<_>>());
    let mut any_lesion = false;
    for (k, info) in infos.iter().enumerate() {
        let img = &seen[&files[2 * k]];
        let seg = &seen[&files[2 * k + 1]];
        assert_eq!(img["shape"], serde_json::json!([64, 64, 24]));
        assert_eq!(img["affine"], seg["affine"], "label map must overlay the image");
        let a = &img["affine"];
        assert!((a[0][0].as_f64().unwrap() + info.spacing[0]).abs() < 1e-5, "x spacing and flip");
        assert!((a[2][2].as_f64().unwrap() - info.spacing[2]).abs() < 1e-5, "z spacing");
        assert!((0.6..0.9).contains(&info.spacing[0]) && (1.0..5.0).contains(&info.spacing[2]));
        assert_eq!(seg["dtype"], "uint8");
        let labels: Vec<f64> = seg["unique"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(labels.iter().all(|l| [0.0, 1.0, 2.0].contains(l)), "{labels:?}");
        any_lesion |= labels.contains(&2.0);
    }
    assert!(any_lesion, "some phantom must have a lesion (label 2)");

    // HU statistics per tissue, measured through our reader.
    let mut measured = Vec::new();
    for (k, info) in infos.iter().enumerate() {
        let img = read_volume(&dir.path().join(format!("volume-{k}.nii.gz")), &ReadOptions::default()).unwrap();
        let seg = read_volume(&dir.path().join(format!("segmentation-{k}.nii.gz")), &ReadOptions::default()).unwrap();
        let pick = |l: f32| -> Vec<f32> {
            img.data.iter().zip(seg.data.iter()).filter(|(_, &s)| s == l).map(|(&v, _)| v).collect()
        };
        let liver = pick(1.0);
        assert!(liver.len() > 1000, "case {k}: liver too small ({} voxels)", liver.len());
        let (m, s) = mean_std(&liver);
        assert!((m - info.liver_hu as f64).abs() < 2.0, "case {k}: liver mean {m} vs drawn {}", info.liver_hu);
        assert!((s / info.noise_sd as f64 - 1.0).abs() < 0.15, "case {k}: liver sd {s} vs noise {}", info.noise_sd);
        assert!((50.0..=70.0).contains(&info.liver_hu));
        let lesion = pick(2.0);
        if lesion.len() > 50 {
            assert!(mean_std(&lesion).0 < m - 15.0, "case {k}: lesions are hypodense");
        }
        let corner = img.data[[0, 0, 0]];
        assert!(corner < -900.0, "air outside the body: {corner}");
        let bone = img.data.iter().filter(|&&v| v > 700.0).count();
        let fat = img.data.iter().filter(|&&v| (-160.0..-40.0).contains(&v)).count();
        assert!(bone > 100 && fat > 1000, "case {k}: bone {bone}, fat {fat} voxels");
        measured.push((info.difficulty, s, m - info.tissue_hu as f64, liver.len()));
    }

    // Difficulty spread: evenly over [0, 1]; harder cases are noisier, lower-contrast and smaller.
    measured.sort_by(|a, b| a.0.total_cmp(&b.0));
    let d: Vec<f32> = measured.iter().map(|m| m.0).collect();
    assert_eq!(d, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    let (easy, hard) = (measured[0], measured[5]);
    assert!(hard.1 > 3.0 * easy.1, "noise: easy {} hard {}", easy.1, hard.1);
    assert!(hard.2 < easy.2 - 10.0, "contrast: easy {} hard {}", easy.2, hard.2);
    assert!(hard.3 < easy.3, "liver size: easy {} hard {}", easy.3, hard.3);
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    synth(a.path(), 1);
    synth(b.path(), 1);
    synth(c.path(), 2);
    let read = |d: &tempfile::TempDir| std::fs::read(d.path().join("volume-3.nii.gz")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
}

#[test]
fn bad_arguments_are_refused_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    for args in [
        ["--cases", "0", "--size", "24,64,64"],
        ["--cases", "2", "--size", "24,64"],
        ["--cases", "2", "--size", "4,64,64"],
    ] {
        let res = Command::new(env!("CARGO_BIN_EXE_autopath"))
            .args(["synth", "--out"])
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        assert!(!res.status.success());
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(common::listing(&out).is_empty());
    }
}

/// `--family mr`: T1-like heads in arbitrary units — non-negative magnitudes, a large brain label
/// brighter than the dark CSF around it, near-isotropic spacing — and reproducible by seed.
#[test]
fn mr_heads_have_a_large_brain_label_in_non_negative_units() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        let status = Command::new(env!("CARGO_BIN_EXE_autopath"))
            .args(["synth", "--quiet", "--family", "mr", "--cases", "3", "--size", "24,64,64", "--out"])
            .arg(out)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&a);
    run(&b);
    for k in 0..3 {
        let img = read_volume(&a.join(format!("volume-{k}.nii.gz")), &ReadOptions::default()).unwrap();
        let lab = read_volume(&a.join(format!("segmentation-{k}.nii.gz")), &ReadOptions::default()).unwrap();
        let again = read_volume(&b.join(format!("volume-{k}.nii.gz")), &ReadOptions::default()).unwrap();
        assert_eq!(img.data, again.data, "same seed, same volume");
        assert!(img.data.iter().all(|&v| v >= 0.0), "magnitude images are non-negative");
        let brain: Vec<f32> = img.data.iter().zip(lab.data.iter()).filter(|(_, &l)| l > 0.0).map(|(&v, _)| v).collect();
        let fraction = brain.len() as f64 / img.data.len() as f64;
        assert!((0.05..0.5).contains(&fraction), "brain fraction {fraction}");
        let (brain_mean, _) = mean_std(&brain);
        assert!(brain_mean > 350.0, "grey and white matter are brighter than CSF (260): {brain_mean}");
        // The grey-matter ribbon (label 2) is darker than the white matter inside it (label 1), as on T1.
        let class = |c: f32| -> Vec<f32> {
            img.data.iter().zip(lab.data.iter()).filter(|(_, &l)| l == c).map(|(&v, _)| v).collect()
        };
        let (grey, white) = (class(2.0), class(1.0));
        assert!(!grey.is_empty() && !white.is_empty(), "both tissues are labelled");
        assert!(mean_std(&grey).0 < mean_std(&white).0, "grey matter is darker than white matter");
        assert!(lab.data.iter().all(|&l| [0.0, 1.0, 2.0].contains(&l)), "labels are 0, 1, 2");
        let sp = img.geometry.spacing;
        assert!(sp.iter().all(|&s| (0.9..=1.5).contains(&s)), "{sp:?}");
    }
}
