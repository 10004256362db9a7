//! DICOM in and DICOM SEG out, against independent tools: series written by pydicom from known arrays,
//! the NIfTI dcm2niix converts from the same files, and the SEG read back by highdicom.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use autopath::input::dicom::{write_seg, SegmentDescription};
use autopath::input::preprocess::Preprocess;
use autopath::input::source::{find, Source};
use autopath::input::volume::{read_volume, ReadOptions, Volume};
use ndarray::Array3;

/// Writes the fixture `case` (tests/python/dicom_fixtures.py) under `root` and returns its folder.
fn fixture(root: &Path, case: &str) -> PathBuf {
    let dir = root.join(case);
    common::python("dicom_fixtures.py", &[case, dir.to_str().unwrap()]);
    dir
}

/// dcm2niix on PATH, or None with a visible SKIPPED line.
fn dcm2niix(test: &str) -> Option<PathBuf> {
    let found = Command::new("dcm2niix").arg("-v").output().is_ok();
    if !found {
        let line = format!(
            "SKIPPED {test}: dcm2niix is not installed (Debian: apt-get install dcm2niix); the comparison with it \
             did not run\n"
        );
        std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes()).unwrap();
        return None;
    }
    Some(PathBuf::from("dcm2niix"))
}

/// dcm2niix's NIfTI of the series in `dir` (uncompressed, one file expected).
fn converted(dcm2niix: &Path, dir: &Path, out: &Path) -> Volume {
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new(dcm2niix)
        .args(["-z", "n", "-b", "n", "-o"])
        .arg(out)
        .args(["-f", "%s"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "dcm2niix: {}", String::from_utf8_lossy(&o.stdout));
    let files = common::listing(out);
    assert_eq!(files.len(), 1, "dcm2niix wrote {files:?}");
    read_volume(&out.join(&files[0]), &ReadOptions::default()).unwrap()
}

fn ours(dir: &Path) -> (Volume, autopath::input::dicom::SeriesReference) {
    let inputs = find(dir).unwrap();
    assert_eq!(inputs.sources.len(), 1, "{dir:?}: {:?}", inputs.notes);
    let (v, r) = inputs.sources[0].read(&ReadOptions::default()).unwrap();
    (v, r.expect("a DICOM source has a reference"))
}

fn assert_same_volume(case: &str, a: &Volume, b: &Volume) {
    assert_eq!(a.geometry.shape, b.geometry.shape, "{case}: shape");
    let differing = a.data.iter().zip(b.data.iter()).filter(|(x, y)| x != y).count();
    assert_eq!(differing, 0, "{case}: {differing} voxels differ from dcm2niix's");
    for r in 0..4 {
        for c in 0..4 {
            let (x, y) = (a.geometry.affine[r][c], b.geometry.affine[r][c]);
            assert!((x - y).abs() < 1e-4, "{case}: affine[{r}][{c}] {x} vs dcm2niix {y}");
        }
    }
}

/// Orientations (axial head- and feet-first, sagittal, coronal, oblique), slice orders (shuffled file
/// names, reversed instance numbers), rescales, transfer syntaxes (explicit, implicit, RLE) and an
/// enhanced multi-frame file: our volume equals dcm2niix's voxel for voxel, its affine within 1e-4 mm.
#[test]
fn series_read_as_dcm2niix_converts_them() {
    let Some(tool) = dcm2niix("series_read_as_dcm2niix_converts_them") else { return };
    let root = tempfile::tempdir().unwrap();
    for case in ["axial", "axial-feet-first", "sagittal", "coronal", "oblique", "enhanced"] {
        let dir = fixture(root.path(), case);
        let reference = converted(&tool, &dir, &root.path().join(format!("{case}-dcm2niix")));
        let (volume, _) = ours(&dir);
        assert_same_volume(case, &volume, &reference);
    }
}

/// Deflated files (which dcm2niix does not read) give the volume dcm2niix converts from the same series
/// stored plainly.
#[test]
fn deflated_series_read_like_their_plain_twin() {
    let Some(tool) = dcm2niix("deflated_series_read_like_their_plain_twin") else { return };
    let root = tempfile::tempdir().unwrap();
    let plain = fixture(root.path(), "sagittal");
    let reference = converted(&tool, &plain, &root.path().join("plain-dcm2niix"));
    let (volume, _) = ours(&fixture(root.path(), "sagittal-deflated"));
    assert_same_volume("sagittal-deflated", &volume, &reference);
}

/// A folder tree with two series and a structured report: two volumes named after their series (stable,
/// filesystem-safe), and one note for the report.
#[test]
fn a_tree_of_series_gives_one_volume_each_and_notes_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let dir = fixture(root.path(), "two-series");
    std::fs::write(dir.join("README.txt"), "not DICOM").unwrap();
    let found = find(&dir).unwrap();
    let names: Vec<String> = found
        .sources
        .iter()
        .map(|s| match s {
            Source::Dicom(s) => s.name.clone(),
            Source::Nifti(p) => panic!("{p:?} is not a series"),
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("3_Abdomen_2.5mm_") && names[1].starts_with("4_Abdomen_thin_"), "{names:?}");
    assert!(names.iter().all(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))));
    assert_eq!(find(&dir).unwrap().sources.iter().map(|s| s.describe()).collect::<Vec<_>>().len(), 2);
    let report: Vec<&String> = found.notes.iter().filter(|n| n.contains("report.dcm")).collect();
    assert_eq!(report.len(), 1, "{:?}", found.notes);
    assert!(report[0].contains("SR object (structured report), not an image"), "{}", report[0]);
    assert!(found.notes.iter().any(|n| n.contains("README.txt") && n.contains("not a readable DICOM file")));
    let shapes: Vec<[usize; 3]> =
        found.sources.iter().map(|s| s.read(&ReadOptions::default()).unwrap().0.geometry.shape).collect();
    assert_eq!(shapes, [[12, 40, 36], [5, 40, 36]]);
    // One file of a series stands for the whole series.
    let one = find(&dir.join("a").join("IM0003.dcm")).unwrap();
    assert_eq!(one.sources.len(), 1);
    assert_eq!(one.sources[0].voxels(&ReadOptions::default()), Some(12 * 40 * 36));
}

/// Series that are not one regular volume are refused with the reason, before any pixel is decoded.
#[test]
fn irregular_series_are_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    for (case, reason) in [
        ("missing-slice", "uneven slice spacing"),
        ("gantry-tilt", "gantry tilt"),
        ("mixed-orientation", "mixed orientations"),
        ("single-slice", "a series of one slice"),
        ("unsupported-syntax", "cannot decode"),
    ] {
        let dir = fixture(root.path(), case);
        let found = find(&dir).unwrap();
        assert_eq!(found.sources.len(), 1, "{case}: {:?}", found.notes);
        let e = found.sources[0].read(&ReadOptions::default()).unwrap_err().to_string();
        assert!(e.contains(reason), "{case}: {e}");
        assert!(e.contains(dir.to_str().unwrap()), "{case}: the message names the series' place: {e}");
    }
    // A limit on voxels applies before decoding, from the headers.
    let dir = fixture(root.path(), "axial");
    let tight = ReadOptions { max_voxels: 1000, ..Default::default() };
    let e = find(&dir).unwrap().sources[0].read(&tight).unwrap_err().to_string();
    assert!(e.contains("over the limit of 1000"), "{e}");
}

/// A label map written as DICOM SEG reads back through highdicom: the same segments (numbers, names),
/// the same voxels on every source frame, the source's geometry, series, study and patient.
#[test]
fn dicom_seg_reads_back_through_highdicom() {
    let root = tempfile::tempdir().unwrap();
    for case in ["oblique", "enhanced", "axial-feet-first"] {
        let dir = fixture(root.path(), case);
        let (volume, reference) = ours(&dir);
        // Two labels from the image itself, so every frame differs.
        let median = {
            let mut v: Vec<f32> = volume.data.iter().copied().collect();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        let labels: Array3<u8> = volume.data.mapv(|x| if x > median + 300.0 { 2 } else { u8::from(x > median) });
        let segments = vec![
            SegmentDescription { number: 1, label: "liver".into() },
            SegmentDescription { number: 2, label: "lesion core".into() },
        ];
        let seg = root.path().join(format!("{case}.dcm"));
        write_seg(&seg, &labels, &reference, &segments).unwrap();
        let read = common::python_json("dicom_seg_read.py", &[seg.to_str().unwrap(), dir.to_str().unwrap()]);
        let shape: Vec<usize> = serde_json::from_value(read["shape"].clone()).unwrap();
        let (d, h, w) = labels.dim();
        assert_eq!(shape, [d, h, w], "{case}");
        assert_eq!(read["segments"][0]["label"], "liver");
        assert_eq!(read["segments"][0]["type"], "Liver");
        assert_eq!(read["segments"][1]["label"], "lesion core");
        for s in &segments {
            let mask = read["masks"][s.number.to_string()].as_str().unwrap().as_bytes();
            // Source row r is volume row h−1−r (the volume counts rows up from the last).
            let mut differing = 0;
            for k in 0..d {
                for r in 0..h {
                    for c in 0..w {
                        let theirs = mask[(k * h + r) * w + c] == b'1';
                        differing += usize::from(theirs != (labels[[k, h - 1 - r, c]] == s.number));
                    }
                }
            }
            assert_eq!(differing, 0, "{case}: segment {} differs on {differing} voxels", s.number);
        }
        for check in [
            "positions_match",
            "orientation_match",
            "series_match",
            "frame_of_reference_match",
            "study_match",
            "patient_match",
        ] {
            assert_eq!(read[check], true, "{case}: {check}");
        }
    }
}

fn bundle() -> &'static Path {
    static BUNDLE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &BUNDLE
        .get_or_init(|| {
            let root = tempfile::tempdir().unwrap();
            let (_, _, bundle) = common::trained_bundle(root.path());
            (root, bundle)
        })
        .1
}

/// `autopath-run` with `bundle` on one input; fails the test if it fails.
fn segment(bundle: &Path, input: &Path, output: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args(["--quiet", "--bundle"])
        .arg(bundle)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autopath-run"))
        .args(["--quiet", "--bundle"])
        .arg(bundle())
        .args(args)
        .output()
        .unwrap()
}

fn labels_of(path: &Path) -> Vec<f32> {
    read_volume(path, &ReadOptions::default()).unwrap().data.iter().copied().collect()
}

/// `autopath-run` on a folder tree of DICOM: one NIfTI per series, each the labels the same run gives
/// on dcm2niix's conversion of that series, on the same grid; a structured report noted; a refused series
/// reported while the others complete, and nothing written for it.
#[test]
fn a_dicom_tree_segments_like_its_dcm2niix_conversion() {
    let root = tempfile::tempdir().unwrap();
    let tree = root.path().join("tree");
    for case in ["two-series", "gantry-tilt"] {
        fixture(&tree, case);
    }
    let out = root.path().join("out");
    let o = run(&["-i", tree.to_str().unwrap(), "-o", out.to_str().unwrap(), "--prefetch", "2"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the tilted series fails the run: {stderr}");
    assert!(stderr.contains("gantry tilt") && stderr.contains("report.dcm"), "{stderr}");
    assert!(stderr.contains("2 segmented, 1 failed"), "{stderr}");
    let written = common::listing(&out);
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(written.iter().all(|n| n.ends_with(".nii.gz")), "{written:?}");
    let Some(tool) = dcm2niix("a_dicom_tree_segments_like_its_dcm2niix_conversion") else { return };
    for (series, name) in [("two-series/a", &written[0]), ("two-series/b", &written[1])] {
        let nifti = root.path().join(format!("{series}-nii"));
        let reference = converted(&tool, &tree.join(series), &nifti);
        let converted_file = nifti.join(&common::listing(&nifti)[0]);
        let seg = root.path().join(format!("{}.nii.gz", series.replace('/', "-")));
        let o = run(&["-i", converted_file.to_str().unwrap(), "-o", seg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours = read_volume(&out.join(name), &ReadOptions::default()).unwrap();
        assert_eq!(ours.geometry.shape, reference.geometry.shape);
        assert_eq!(labels_of(&out.join(name)), labels_of(&seg), "{series}: labels differ from the NIfTI run's");
    }
}

/// `--output-type dicom-seg`: one SEG per series with the bundle's label names, read back by highdicom
/// equal to the NIfTI labels of the same run; asked of a NIfTI input, refused before any work.
#[test]
fn dicom_seg_output_carries_the_bundles_labels() {
    let root = tempfile::tempdir().unwrap();
    let dir = fixture(root.path(), "oblique");
    let (segs, nii) = (root.path().join("segs"), root.path().join("nii"));
    for (out, kind) in [(&segs, "dicom-seg"), (&nii, "nifti")] {
        let o = run(&["-i", dir.to_str().unwrap(), "-o", &format!("{}/", out.display()), "--output-type", kind]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let seg = segs.join(&common::listing(&segs)[0]);
    assert!(seg.to_string_lossy().ends_with(".dcm"), "{seg:?}");
    let read = common::python_json("dicom_seg_read.py", &[seg.to_str().unwrap(), dir.to_str().unwrap()]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle().join("manifest.json")).unwrap()).unwrap();
    let names = manifest["input"]["labels"].as_array().unwrap();
    let labels = read_volume(&nii.join(&common::listing(&nii)[0]), &ReadOptions::default()).unwrap().data;
    let (d, h, w) = labels.dim();
    for (i, name) in names.iter().enumerate().skip(1) {
        assert_eq!(read["segments"][i - 1]["label"], *name);
        let mask = read["masks"][i.to_string()].as_str().unwrap().as_bytes();
        let differing = (0..d * h * w)
            .filter(|t| {
                let (k, r, c) = (t / (h * w), t / w % h, t % w);
                (mask[*t] == b'1') != (labels[[k, h - 1 - r, c]] as usize == i)
            })
            .count();
        assert_eq!(differing, 0, "segment {name} differs from the NIfTI labels on {differing} voxels");
    }
    // A SEG references its source: a NIfTI input cannot have one, and nothing is computed.
    let nifti_input = nii.join(&common::listing(&nii)[0]);
    let o = run(&[
        "-i",
        nifti_input.to_str().unwrap(),
        "-o",
        root.path().join("x/").to_str().unwrap(),
        "--output-type",
        "dicom-seg",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("is NIfTI; use nifti"), "{stderr}");
    assert!(!root.path().join("x").exists(), "nothing is created for a refused run");
}

/// `serve` takes a zipped series (`Content-Type: application/zip`) and answers a NIfTI, or with
/// `?output=dicom-seg` a DICOM SEG that highdicom reads back equal to it; a SEG of a NIfTI body, a zip of
/// two series and a zip entry pointing outside are refused with the reason.
#[test]
fn serve_takes_a_zipped_series_and_answers_dicom_seg() {
    let root = tempfile::tempdir().unwrap();
    let dir = fixture(root.path(), "zips");
    let (mut child, addr) = common::spawn_server(Command::new(env!("CARGO_BIN_EXE_autopath-run")).args([
        "serve",
        "--bundle",
        bundle().to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
    ]));
    let zip = std::fs::read(dir.join("series.zip")).unwrap();
    let post = |query: &str, content_type: &str, body: &[u8]| {
        common::http_with(&addr, "POST", &format!("/v1/segment{query}"), &[("Content-Type", content_type)], body)
    };
    let (status, h, seg) = post("?output=dicom-seg", "application/zip", &zip);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&seg));
    assert_eq!(common::header(&h, "content-type"), Some("application/dicom"));
    let (status, h, nifti) = post("", "application/zip", &zip);
    assert_eq!((status, common::header(&h, "content-type")), (200, Some("application/gzip")));
    let (seg_file, nifti_file) = (root.path().join("answer.dcm"), root.path().join("answer.nii.gz"));
    std::fs::write(&seg_file, &seg).unwrap();
    std::fs::write(&nifti_file, &nifti).unwrap();
    let read =
        common::python_json("dicom_seg_read.py", &[seg_file.to_str().unwrap(), dir.join("series").to_str().unwrap()]);
    let labels = read_volume(&nifti_file, &ReadOptions::default()).unwrap().data;
    let (d, h, w) = labels.dim();
    let mask = read["masks"]["1"].as_str().unwrap().as_bytes();
    let differing = (0..d * h * w)
        .filter(|t| (mask[*t] == b'1') != (labels[[t / (h * w), h - 1 - t / w % h, t % w]] == 1.0))
        .count();
    assert_eq!(differing, 0);
    for (query, content_type, body, status, reason) in [
        ("?output=dicom-seg", "application/octet-stream", nifti.clone(), 400, "send a zipped DICOM series"),
        ("", "application/zip", std::fs::read(dir.join("two.zip")).unwrap(), 422, "holds 2 series"),
        ("", "application/zip", std::fs::read(dir.join("escape.zip")).unwrap(), 422, "points outside the archive"),
        ("", "application/zip", b"PK not really".to_vec(), 422, "not a zip archive"),
        ("?output=png", "application/zip", zip.clone(), 400, "expected nifti or dicom-seg"),
    ] {
        let (s, _, body) = post(query, content_type, &body);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(s, status, "{query} {content_type}: {text}");
        assert!(text.contains(reason), "{text}");
    }
    assert!(!root.path().join("escaped.dcm").exists() && !dir.join("escaped.dcm").exists());
    child.kill().unwrap();
    let _ = child.wait();
}

/// Label names and modality from the data set's dataset.json and a fixed `--spacing` travel from
/// training into the manifest, `inspect`, and the NIfTI output (intent NIFTI_INTENT_LABEL and the names
/// in its description, read by nibabel); the output lies on the input's grid.
#[test]
fn names_and_spacing_travel_from_training_to_the_outputs() {
    let root = tempfile::tempdir().unwrap();
    let (data, run, bundle) = (root.path().join("data"), root.path().join("run"), root.path().join("bundle"));
    let autopath = common::autopath;
    autopath(&[
        "synth",
        "--quiet",
        "--cases",
        "8",
        "--size",
        "24,64,64",
        "--seed",
        "5",
        "--out",
        data.to_str().unwrap(),
    ]);
    let described = r#"{"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "lesion"}}"#;
    std::fs::write(data.join("dataset.json"), described).unwrap();
    autopath(&[
        "train",
        "--quiet",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--arch",
        "r18",
        "--width",
        "8",
        "--patch",
        "16,48,48",
        "--epochs",
        "150",
        "--lr",
        "0.004",
        "--batch",
        "2",
        "--val-cases",
        "1",
        "--split",
        "0.2",
        "--spacing",
        "2.0,1.0,1.0",
    ]);
    autopath(&["compile", "--seg", run.to_str().unwrap(), "--out", bundle.to_str().unwrap()]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["input"]["labels"], serde_json::json!(["background", "liver+lesion"]));
    assert_eq!(manifest["input"]["modality"], "CT");
    assert_eq!(manifest["input"]["preprocessing"]["target_spacing"], serde_json::json!([2.0, 1.0, 1.0]));
    let shown = autopath(&["inspect", bundle.to_str().unwrap()]);
    assert!(shown.contains("labels: 0=background, 1=liver+lesion (resampled to 2.000,1.000,1.000 mm"), "{shown}");
    let input = data.join("volume-0.nii.gz");
    let output = root.path().join("seg.nii.gz");
    segment(&bundle, &input, &output);
    let seen = common::python_json("nifti_inspect.py", &[input.to_str().unwrap(), output.to_str().unwrap()]);
    let (i, s) = (&seen[input.to_str().unwrap()], &seen[output.to_str().unwrap()]);
    assert_eq!((&i["shape"], &i["affine"]), (&s["shape"], &s["affine"]), "the output lies on the input's grid");
    assert_eq!(s["intent_code"], 1002);
    assert_eq!(s["intent_name"], "labels");
    assert_eq!(s["descrip"], "autopath labels: 1=liver+lesion");
    // The labels are the Candle network's probabilities on the resampled grid, brought back to the
    // input's grid (trilinear) and thresholded; only probabilities within 1e-4 of 0.5 may differ.
    let (net, cfg) = autopath::study::train::segment::load_segmenter(&run, "best").unwrap();
    let volume = read_volume(&input, &ReadOptions::default()).unwrap();
    let (image, record) = cfg.preprocessing.image(&volume).unwrap();
    assert_ne!(record.resampled_shape, record.original_shape, "the test volume is resampled");
    let path = autopath_models::deeplab::BlockPath::Shared(&[true; 8]);
    let probs =
        autopath::study::train::infer::predict_probabilities(&net, &image, record.pad_value, &cfg.window, path, 2)
            .unwrap();
    let back = autopath::input::preprocess::resample_linear(
        &probs.index_axis(ndarray::Axis(0), 0).to_owned(),
        record.original_shape,
    );
    let got = read_volume(&output, &ReadOptions::default()).unwrap().data;
    let differing = back
        .iter()
        .zip(got.iter())
        .filter(|(p, g)| u8::from(**p >= 0.5) != **g as u8 && (**p - 0.5).abs() >= 1e-4)
        .count();
    assert_eq!(differing, 0, "{differing} voxels differ from the Candle network's resampled probabilities");
    // The same volume at twice the slice spacing (every other slice, by nibabel) segments within 0.02
    // Dice of it: both are resampled to the bundle's spacing and their probabilities brought back.
    let label = data.join("segmentation-0.nii.gz");
    let (half, half_label, half_seg) =
        (root.path().join("half.nii.gz"), root.path().join("half-label.nii.gz"), root.path().join("half-seg.nii.gz"));
    for (from, to) in [(&input, &half), (&label, &half_label)] {
        common::python("nifti_every_other_slice.py", &[from.to_str().unwrap(), to.to_str().unwrap()]);
    }
    segment(&bundle, &half, &half_seg);
    let dice = |seg: &Path, truth: &Path| {
        let (s, t) =
            (read_volume(seg, &ReadOptions::default()).unwrap(), read_volume(truth, &ReadOptions::default()).unwrap());
        autopath::labels::dice(s.data.iter().map(|v| *v > 0.0), t.data.iter().map(|v| *v > 0.0))
    };
    let (at_training, at_half) = (dice(&output, &label), dice(&half_seg, &half_label));
    let line =
        format!("spacing: Dice {at_training:.4} at the volume's spacing, {at_half:.4} at twice its slice spacing\n");
    std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes()).unwrap();
    assert!(at_training > 0.5, "the test model segments: Dice {at_training}");
    assert!((at_training - at_half).abs() <= 0.02, "Dice {at_training} vs {at_half} at twice the slice spacing");
}

/// JPEG baseline series (8-bit, encoded by Pillow, encapsulated by pydicom) decode to what pydicom
/// decodes, within one grey level (two JPEG decoders' inverse DCTs may round differently).
#[test]
fn jpeg_baseline_series_decode_like_pydicom() {
    let root = tempfile::tempdir().unwrap();
    let dir = fixture(root.path(), "jpeg-baseline");
    let raw = std::fs::read(root.path().join("jpeg-baseline-decoded.f32")).unwrap();
    let theirs: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let (volume, _) = ours(&dir);
    let (d, h, w) = volume.data.dim();
    assert_eq!(theirs.len(), d * h * w);
    let mut worst = 0f32;
    for k in 0..d {
        for r in 0..h {
            for c in 0..w {
                worst = worst.max((volume.data[[k, h - 1 - r, c]] - theirs[(k * h + r) * w + c]).abs());
            }
        }
    }
    assert!(worst <= 1.0, "largest difference from pydicom's decoding: {worst}");
}
