//! Writing volumes on a known grid, atomically, with the geometry copied from the source header.

use std::path::Path;

use ndarray::Array3;

use super::Geometry;
use crate::atomic::write_atomically;
use crate::error::{Error, Result};

fn output_header(geometry: &Geometry, shape: [usize; 3], path: &Path, description: &str) -> Result<nifti::NiftiHeader> {
    if shape != geometry.shape {
        return Err(Error::invalid(
            "output volume",
            format!("{}: shape {:?} differs from its geometry {:?}", path.display(), shape, geometry.shape),
        ));
    }
    let mut h = geometry.header.clone();
    // Display range and intent described the source image, not what we write.
    h.cal_min = 0.0;
    h.cal_max = 0.0;
    h.intent_code = 0;
    h.intent_name = [0; 16];
    h.aux_file = [0; 24];
    let mut d = description.as_bytes().to_vec();
    d.resize(80, 0);
    h.descrip = d;
    Ok(h)
}

fn write_with<T>(path: &Path, data: &Array3<T>, geometry: &Geometry, description: &str) -> Result<()>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    let header = output_header(geometry, data.dim().into(), path, description)?;
    write_header(path, data, header)
}

fn write_header<T>(path: &Path, data: &Array3<T>, header: nifti::NiftiHeader) -> Result<()>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    write_atomically(path, |tmp| {
        // The writer expects NIfTI (i, j, k) axis order; ours is [k, j, i] (see `volume`).
        nifti::writer::WriterOptions::new(tmp)
            .reference_header(&header)
            .write_nifti(&data.t())
            .map_err(|e| Error::invalid("NIfTI output", format!("{}: {e}", path.display())))
    })
}

/// Writes a label map (`u8`) on the grid of `geometry`: same dims, pixdim, qform/sform codes and matrices,
/// so viewers overlay it exactly on the image it came from. `.nii.gz` names are compressed.
pub fn write_labels(path: &Path, labels: &Array3<u8>, geometry: &Geometry) -> Result<()> {
    write_with(path, labels, geometry, "autopath segmentation")
}

/// NIFTI_INTENT_LABEL: each voxel's value indexes a set of labels.
const INTENT_LABEL: i16 = 1002;

/// [`write_labels`] with the label names: intent NIFTI_INTENT_LABEL and the names in the description
/// (`autopath labels: 1=liver 2=tumour`, cut at the field's 79 characters).
pub fn write_label_map(path: &Path, labels: &Array3<u8>, geometry: &Geometry, names: &[String]) -> Result<()> {
    let mut description = String::from("autopath labels:");
    for (i, n) in names.iter().enumerate().skip(1) {
        description.push_str(&format!(" {i}={n}"));
    }
    let cut = (0..=description.len().min(79)).rev().find(|i| description.is_char_boundary(*i)).unwrap_or(0);
    description.truncate(cut);
    let mut header = output_header(geometry, labels.dim().into(), path, &description)?;
    header.intent_code = INTENT_LABEL;
    let mut name = b"labels".to_vec();
    name.resize(16, 0);
    header.intent_name.copy_from_slice(&name);
    write_header(path, labels, header)
}

/// Writes an `int16` image (HU for CT) on the grid of `geometry`.
pub fn write_image_i16(path: &Path, image: &Array3<i16>, geometry: &Geometry) -> Result<()> {
    write_with(path, image, geometry, "autopath synthetic CT")
}
