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

/// Writes an `int16` image (HU for CT) on the grid of `geometry`.
pub fn write_image_i16(path: &Path, image: &Array3<i16>, geometry: &Geometry) -> Result<()> {
    write_with(path, image, geometry, "autopath synthetic CT")
}
