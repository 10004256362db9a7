//! NIfTI reading and writing, checked against nibabel (an independent implementation) and against
//! hand-built headers for every way a file can be broken.

mod common;

use std::io::Write;
use std::path::Path;

use autopath::input::volume::{
    read_geometry, read_volume, write_image_i16, write_labels, Geometry, NonFinite, ReadOptions,
};
use autopath::VolumeError;
use ndarray::Array3;

/// A minimal little-endian NIfTI-1 file, written byte by byte (independent of the code under test).
struct RawNifti {
    dim: [i16; 8],
    datatype: i16,
    bitpix: i16,
    pixdim: [f32; 8],
    vox_offset: f32,
    scl: (f32, f32),
    magic: [u8; 4],
    data: Vec<u8>,
}

impl RawNifti {
    fn u8_volume(d: usize, h: usize, w: usize) -> Self {
        RawNifti {
            dim: [3, w as i16, h as i16, d as i16, 1, 1, 1, 1],
            datatype: 2,
            bitpix: 8,
            pixdim: [1.0, 0.8, 0.8, 2.0, 1.0, 0.0, 0.0, 0.0],
            vox_offset: 352.0,
            scl: (0.0, 0.0),
            magic: *b"n+1\0",
            data: (0..d * h * w).map(|i| (i % 251) as u8).collect(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 352];
        b[0..4].copy_from_slice(&348i32.to_le_bytes());
        for (i, v) in self.dim.iter().enumerate() {
            b[40 + 2 * i..42 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[70..72].copy_from_slice(&self.datatype.to_le_bytes());
        b[72..74].copy_from_slice(&self.bitpix.to_le_bytes());
        for (i, v) in self.pixdim.iter().enumerate() {
            b[76 + 4 * i..80 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[108..112].copy_from_slice(&self.vox_offset.to_le_bytes());
        b[112..116].copy_from_slice(&self.scl.0.to_le_bytes());
        b[116..120].copy_from_slice(&self.scl.1.to_le_bytes());
        b[344..348].copy_from_slice(&self.magic);
        if self.vox_offset.is_finite() && self.vox_offset > 352.0 && self.vox_offset < 1.0e6 {
            b.resize(self.vox_offset as usize, 0);
        }
        b.extend_from_slice(&self.data);
        b
    }

    fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn refusal(path: &Path) -> VolumeError {
    let err = read_volume(path, &ReadOptions::default()).expect_err("bad file must be refused");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message must name the file: {msg}");
    err.volume_kind().cloned().unwrap_or_else(|| panic!("expected a volume error, got {err}"))
}

fn test_affine() -> [[f64; 4]; 4] {
    [[-0.75, 0.0, 0.0, 47.6], [0.0, -0.75, 0.0, 30.0], [0.0, 0.0, 2.5, -60.0], [0.0, 0.0, 0.0, 1.0]]
}

#[test]
fn reads_what_nibabel_writes_for_every_supported_type_and_placement() {
    let dir = tempfile::tempdir().unwrap();
    let expect = common::python_json("nifti_fixtures.py", &[dir.path().to_str().unwrap()]);
    let expect = expect.as_object().unwrap();
    assert!(expect.len() >= 10);
    for (name, e) in expect {
        let vol =
            read_volume(&dir.path().join(name), &ReadOptions::default()).unwrap_or_else(|err| panic!("{name}: {err}"));
        let shape: Vec<usize> =
            e["shape_dhw"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(vol.geometry.shape.to_vec(), shape, "{name} shape");
        let sum: f64 = vol.data.iter().map(|&v| v as f64).sum();
        let want = e["sum"].as_f64().unwrap();
        assert!((sum - want).abs() <= 1e-3 * want.abs().max(1.0), "{name}: sum {sum} vs nibabel {want}");
        assert_eq!(vol.data[[0, 0, 0]] as f64, e["first"].as_f64().unwrap() as f32 as f64, "{name} first voxel");
        assert_eq!(
            *vol.data.iter().last().unwrap() as f64,
            e["last"].as_f64().unwrap() as f32 as f64,
            "{name} last voxel"
        );
        assert_eq!(vol.data[[1, 2, 3]] as f64, e["probe"].as_f64().unwrap() as f32 as f64, "{name} voxel [1,2,3]");
        for r in 0..4 {
            for c in 0..4 {
                let want = e["affine"][r][c].as_f64().unwrap();
                assert!(
                    (vol.geometry.affine[r][c] - want).abs() < 1e-4,
                    "{name}: affine[{r}][{c}] {} vs nibabel {want}",
                    vol.geometry.affine[r][c]
                );
            }
        }
        for a in 0..3 {
            assert!((vol.geometry.spacing[a] - e["pixdim"][a].as_f64().unwrap()).abs() < 1e-6, "{name} pixdim");
        }
    }
}

#[test]
fn round_trip_keeps_voxels_dims_pixdim_and_affine() {
    let dir = tempfile::tempdir().unwrap();
    let geometry = Geometry::new([5, 6, 7], test_affine());
    let image = Array3::from_shape_fn([5, 6, 7], |(z, y, x)| (z * 100 + y * 10 + x) as i16 - 300);
    let labels = image.mapv(|v| (v.rem_euclid(3)) as u8);
    for ext in ["nii", "nii.gz"] {
        let img_path = dir.path().join(format!("img.{ext}"));
        let lab_path = dir.path().join(format!("lab.{ext}"));
        write_image_i16(&img_path, &image, &geometry).unwrap();
        write_labels(&lab_path, &labels, &geometry).unwrap();
        let img = read_volume(&img_path, &ReadOptions::default()).unwrap();
        let lab = read_volume(&lab_path, &ReadOptions::default()).unwrap();
        assert_eq!(img.data, image.mapv(f32::from));
        assert_eq!(lab.data, labels.mapv(f32::from));
        for v in [&img, &lab] {
            assert_eq!(v.geometry.shape, [5, 6, 7]);
            assert_eq!(v.geometry.spacing, [0.75, 0.75, 2.5]);
            for r in 0..4 {
                for c in 0..4 {
                    assert!((v.geometry.affine[r][c] - test_affine()[r][c]).abs() < 1e-5);
                }
            }
        }
        // Only the two outputs: no temporaries left behind.
        assert!(common::listing(dir.path()).iter().all(|n| !n.starts_with('.')));
    }
    // nibabel sees the same shape (i, j, k), affine, codes and label values.
    let files: Vec<String> =
        ["img.nii.gz", "lab.nii.gz"].iter().map(|n| dir.path().join(n).display().to_string()).collect();
    let seen = common::python_json("nifti_inspect.py", &files.iter().map(String::as_str).collect::<Vec<_>>());
    for f in &files {
        let s = &seen[f];
        assert_eq!(s["shape"], serde_json::json!([7, 6, 5]), "{f}");
        assert_eq!(s["sform_code"], 1);
        assert_eq!(s["qform_code"], 1);
        for r in 0..4 {
            for c in 0..4 {
                assert!((s["affine"][r][c].as_f64().unwrap() - test_affine()[r][c]).abs() < 1e-5, "{f} affine");
                assert!((s["qform"][r][c].as_f64().unwrap() - test_affine()[r][c]).abs() < 1e-5, "{f} qform");
            }
        }
    }
    assert_eq!(seen[&files[1]]["dtype"], "uint8");
    assert_eq!(seen[&files[1]]["unique"], serde_json::json!([0.0, 1.0, 2.0]));
}

#[test]
fn labels_written_on_an_input_grid_copy_its_qform_and_sform_exactly() {
    // A scanner-style file whose qform and sform differ (codes 1 and 2): the label map must carry both.
    let dir = tempfile::tempdir().unwrap();
    common::python_json("nifti_fixtures.py", &[dir.path().to_str().unwrap()]);
    let src = dir.path().join("sform_and_qform.nii");
    let vol = read_volume(&src, &ReadOptions::default()).unwrap();
    let labels = vol.data.mapv(|v| u8::from(v > 0.0));
    let out = dir.path().join("seg.nii.gz");
    write_labels(&out, &labels, &vol.geometry).unwrap();
    let (a, b) = (src.display().to_string(), out.display().to_string());
    let seen = common::python_json("nifti_inspect.py", &[&a, &b]);
    for key in ["shape", "affine", "qform_code", "sform_code", "qform", "sform", "pixdim"] {
        assert_eq!(seen[&a][key], seen[&b][key], "{key} differs between input and label map");
    }
    assert_eq!(seen[&b]["dtype"], "uint8");
}

#[test]
fn four_d_with_one_time_point_reads_as_3d() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(3, 4, 5);
    raw.dim = [4, 5, 4, 3, 1, 1, 1, 1];
    let vol = read_volume(&raw.write(dir.path(), "t1.nii"), &ReadOptions::default()).unwrap();
    assert_eq!(vol.geometry.shape, [3, 4, 5]);
}

#[test]
fn scl_slope_and_inter_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(2, 2, 2);
    raw.scl = (2.0, -5.0);
    let vol = read_volume(&raw.write(dir.path(), "s.nii"), &ReadOptions::default()).unwrap();
    assert_eq!(vol.data.iter().copied().collect::<Vec<_>>(), (0..8).map(|i| i as f32 * 2.0 - 5.0).collect::<Vec<_>>());
}

#[test]
fn gzip_is_detected_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let raw = RawNifti::u8_volume(3, 4, 5);
    let p = dir.path().join("renamed.nii");
    std::fs::write(&p, gzip(&raw.bytes())).unwrap();
    assert_eq!(read_volume(&p, &ReadOptions::default()).unwrap().geometry.shape, [3, 4, 5]);
}

#[test]
fn bad_magic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(3, 4, 5);
    raw.magic = *b"xyz\0";
    assert!(matches!(refusal(&raw.write(dir.path(), "m.nii")), VolumeError::BadMagic(_)));
}

#[test]
fn a_file_that_is_not_nifti_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.nii.gz");
    std::fs::write(&p, b"patient notes, not an image").unwrap();
    assert!(matches!(refusal(&p), VolumeError::Truncated { what: "header", .. }));
    let p = dir.path().join("big.nii");
    std::fs::write(&p, vec![b'a'; 4000]).unwrap();
    assert!(matches!(refusal(&p), VolumeError::BadMagic(_)));
}

#[test]
fn truncated_files_are_refused_plain_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = RawNifti::u8_volume(4, 8, 8).bytes();
    let cut = &bytes[..bytes.len() - 17];
    let p = dir.path().join("cut.nii");
    std::fs::write(&p, cut).unwrap();
    assert!(matches!(refusal(&p), VolumeError::Truncated { what: "voxel data", expected: 256, found: 239 }));
    let p = dir.path().join("cut_header.nii");
    std::fs::write(&p, &bytes[..200]).unwrap();
    assert!(matches!(refusal(&p), VolumeError::Truncated { what: "header", .. }));
    // A gzip stream cut short: either the data or the stream is reported, never a panic.
    let gz = gzip(&bytes);
    let p = dir.path().join("cut.nii.gz");
    std::fs::write(&p, &gz[..gz.len() / 2]).unwrap();
    assert!(matches!(refusal(&p), VolumeError::Truncated { .. } | VolumeError::Gzip(_)));
}

#[test]
fn bad_vox_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, off) in [100.0f32, f32::NAN, 352.5, 1.0e12].into_iter().enumerate() {
        let mut raw = RawNifti::u8_volume(2, 2, 2);
        raw.vox_offset = off;
        assert!(
            matches!(refusal(&raw.write(dir.path(), &format!("o{i}.nii"))), VolumeError::BadVoxOffset(_)),
            "vox_offset {off}"
        );
    }
}

#[test]
fn nan_inf_or_zero_pixdim_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, bad) in [f32::NAN, f32::INFINITY, 0.0, -1.0].into_iter().enumerate() {
        let mut raw = RawNifti::u8_volume(2, 2, 2);
        raw.pixdim[2] = bad;
        assert!(
            matches!(refusal(&raw.write(dir.path(), &format!("p{i}.nii"))), VolumeError::BadPixdim(_)),
            "pixdim {bad}"
        );
    }
}

#[test]
fn absurd_dims_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(2, 2, 2);
    raw.dim = [3, 30000, 30000, 30000, 1, 1, 1, 1];
    // The file holds 8 voxels; the header claims 2.7e13. The limit check must fire first.
    let p = raw.write(dir.path(), "huge.nii");
    assert!(matches!(refusal(&p), VolumeError::TooManyVoxels { voxels: 27_000_000_000_000, .. }));
    // A configurable limit.
    let small = RawNifti::u8_volume(4, 8, 8).write(dir.path(), "ok.nii");
    let err = read_volume(&small, &ReadOptions { max_voxels: 100, ..ReadOptions::default() }).unwrap_err();
    assert!(matches!(err.volume_kind(), Some(VolumeError::TooManyVoxels { voxels: 256, limit: 100, .. })));
}

#[test]
fn images_that_are_not_3d_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (i, dim) in
        [[4, 5, 4, 3, 3, 1, 1, 1], [2, 5, 4, 1, 1, 1, 1, 1], [3, 5, 0, 3, 1, 1, 1, 1], [9, 5, 4, 3, 1, 1, 1, 1]]
            .into_iter()
            .enumerate()
    {
        let mut raw = RawNifti::u8_volume(3, 4, 5);
        raw.dim = dim;
        let kind = refusal(&raw.write(dir.path(), &format!("d{i}.nii")));
        assert!(
            matches!(
                kind,
                VolumeError::NotThreeD { .. }
                    | VolumeError::ZeroExtent { .. }
                    | VolumeError::BadMagic(_)
                    | VolumeError::Gzip(_)
            ),
            "dim {dim:?}: {kind}"
        );
    }
    let mut raw = RawNifti::u8_volume(3, 4, 5);
    raw.dim = [4, 5, 4, 3, 3, 1, 1, 1];
    assert!(matches!(refusal(&raw.write(dir.path(), "t3.nii")), VolumeError::NotThreeD { .. }));
}

#[test]
fn unsupported_datatype_and_bitpix_mismatch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(2, 2, 2);
    raw.datatype = 32; // complex64
    raw.bitpix = 64;
    assert!(matches!(refusal(&raw.write(dir.path(), "c.nii")), VolumeError::UnsupportedDatatype(32)));
    let mut raw = RawNifti::u8_volume(2, 2, 2);
    raw.bitpix = 16;
    assert!(matches!(refusal(&raw.write(dir.path(), "b.nii")), VolumeError::BitpixMismatch { .. }));
}

#[test]
fn nan_voxels_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = RawNifti::u8_volume(2, 2, 2);
    raw.datatype = 16;
    raw.bitpix = 32;
    let mut vals = [1.0f32; 8];
    vals[5] = f32::NAN;
    vals[6] = f32::INFINITY;
    raw.data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = raw.write(dir.path(), "nan.nii");
    assert_eq!(refusal(&path), VolumeError::NonFiniteVoxels { count: 2, first: 5 });
    // Replacing them is the user's choice, offered in the error.
    vals[0] = -3.0;
    raw.data = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = raw.write(dir.path(), "nan2.nii");
    let err = read_volume(&path, &ReadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("nan2.nii") && err.contains("--nan zero"), "{err}");
    for (policy, fill) in [(NonFinite::Zero, 0.0f32), (NonFinite::Min, -3.0)] {
        let v = read_volume(&path, &ReadOptions { non_finite: policy, ..Default::default() }).unwrap();
        let got: Vec<f32> = v.data.iter().copied().collect();
        assert_eq!(got, vec![-3.0, 1.0, 1.0, 1.0, 1.0, fill, fill, 1.0], "{policy:?}");
    }
}

#[test]
fn header_geometry_without_reading_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = RawNifti::u8_volume(4, 8, 8).bytes();
    let p = dir.path().join("cut.nii");
    std::fs::write(&p, &bytes[..400]).unwrap();
    let g = read_geometry(&p, &ReadOptions::default()).unwrap();
    assert_eq!(g.shape, [4, 8, 8]);
    assert_eq!(g.spacing, [0.800000011920929, 0.800000011920929, 2.0]);
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let geometry = Geometry::new([5, 6, 7], test_affine());
    // Shape that does not match the geometry.
    let err = write_labels(&dir.path().join("seg.nii.gz"), &Array3::zeros([5, 6, 8]), &geometry).unwrap_err();
    assert!(err.to_string().contains("seg.nii.gz"), "{err}");
    // A folder that does not exist.
    let err = write_labels(&dir.path().join("missing/seg.nii.gz"), &Array3::zeros([5, 6, 7]), &geometry).unwrap_err();
    assert!(err.to_string().contains("seg.nii.gz"), "{err}");
    assert!(common::listing(dir.path()).is_empty(), "{:?}", common::listing(dir.path()));
}

#[test]
fn labels_for_a_nifti2_input_are_nifti1_on_its_grid() {
    // NIfTI-2 carries f64 geometry; the label map (NIfTI-1, f32 fields) must place voxels where the
    // input's do, to float precision, with the same codes.
    let dir = tempfile::tempdir().unwrap();
    common::python_json("nifti_fixtures.py", &[dir.path().to_str().unwrap()]);
    for name in ["nifti2_float32.nii.gz", "nifti2_qform_only.nii"] {
        let src = dir.path().join(name);
        let vol = read_volume(&src, &ReadOptions::default()).unwrap();
        let out = dir.path().join(format!("seg-{name}"));
        write_labels(&out, &vol.data.mapv(|v| u8::from(v > 0.0)), &vol.geometry).unwrap();
        let (a, b) = (src.display().to_string(), out.display().to_string());
        let seen = common::python_json("nifti_inspect.py", &[&a, &b]);
        for key in ["shape", "qform_code", "sform_code"] {
            assert_eq!(seen[&a][key], seen[&b][key], "{name}: {key}");
        }
        for r in 0..4 {
            for c in 0..4 {
                let (x, y) = (seen[&a]["affine"][r][c].as_f64().unwrap(), seen[&b]["affine"][r][c].as_f64().unwrap());
                assert!((x - y).abs() < 1e-4, "{name}: affine[{r}][{c}] {x} vs {y}");
            }
        }
        assert_eq!(seen[&b]["dtype"], "uint8");
    }
}
