//! DICOM in and DICOM SEG out, against independent tools: series written by pydicom from known arrays,
//! the NIfTI dcm2niix converts from the same files, and the SEG read back by highdicom.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use autopath::input::dicom::{write_seg, SegmentDescription};
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
