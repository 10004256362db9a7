//! Decoding one series into a volume, file by file.

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_pixeldata::PixelDecoder;
use ndarray::Array3;

use super::geometry::Plane;
use super::scan::Series;
use crate::error::{Error, Result, VolumeError};
use crate::input::volume::{Geometry, ReadOptions, Volume};

/// What a DICOM SEG needs of its source: the patient and study, and which source frame each slice of
/// the volume came from.
#[derive(Debug, Clone)]
pub struct SeriesReference {
    /// SeriesInstanceUID of the source.
    pub series_uid: String,
    /// The source series' name (see [`Series::name`]).
    pub name: String,
    /// Modality of the source.
    pub modality: String,
    pub(crate) planes: Vec<Plane>,
    pub(crate) header: InMemDicomObject,
    /// The folder or file the series came from.
    pub location: PathBuf,
}

/// Decodes `series` into a volume (values after RescaleSlope/Intercept, laid out as dcm2niix writes
/// it) and the references a DICOM SEG of it needs. A series refused by its headers, one over
/// `opts.max_voxels`, or pixel data that does not decode is an error naming the file and the reason.
pub fn read_series(series: &Series, opts: &ReadOptions) -> Result<(Volume, SeriesReference)> {
    let grid = series.grid.as_ref().map_err(|why| Error::dicom(&series.location, why.clone()))?;
    let [d, h, w] = grid.shape;
    let voxels = (d * h * w) as u64;
    if voxels > opts.max_voxels {
        return Err(Error::volume(
            &series.location,
            VolumeError::TooManyVoxels { dims: vec![w as u16, h as u16, d as u16], voxels, limit: opts.max_voxels },
        ));
    }
    let mut data = Array3::<f32>::zeros((d, h, w));
    // Files in the order of their first slice; a multi-frame file is decoded once for all its frames.
    let mut order: Vec<usize> = grid.planes.iter().map(|p| p.file).collect();
    order.dedup();
    let mut seen = std::collections::HashSet::new();
    for file in order.into_iter().filter(|f| seen.insert(*f)) {
        let path = &series.files[file];
        let obj = dicom_object::open_file(path).map_err(|e| Error::dicom(path, format!("cannot read: {e}")))?;
        let pixels = obj.decode_pixel_data().map_err(|e| Error::dicom(path, format!("pixel data: {e}")))?;
        if (pixels.rows(), pixels.columns()) != (h as u32, w as u32) {
            return Err(Error::dicom(path, "pixel data size differs from Rows × Columns".to_string()));
        }
        for (k, plane) in grid.planes.iter().enumerate().filter(|(_, p)| p.file == file) {
            let frame: Vec<f32> = pixels
                .to_vec_frame(plane.frame)
                .map_err(|e| Error::dicom(path, format!("frame {}: {e}", plane.frame)))?;
            if frame.len() != h * w {
                return Err(Error::dicom(
                    path,
                    format!("frame {} holds {} pixels, expected {}", plane.frame, frame.len(), h * w),
                ));
            }
            // Row r of the frame is row h−1−r of the volume (dcm2niix's layout: rows up from the last).
            let mut slice = data.index_axis_mut(ndarray::Axis(0), k);
            for (r, row) in frame.chunks_exact(w).enumerate() {
                slice.row_mut(h - 1 - r).iter_mut().zip(row).for_each(|(v, x)| *v = *x);
            }
        }
    }
    if let Some(first) = data.iter().position(|v| !v.is_finite()) {
        let count = data.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::volume(&series.location, VolumeError::NonFiniteVoxels { count, first }));
    }
    let geometry = Geometry::new(grid.shape, grid.affine);
    let reference = SeriesReference {
        series_uid: series.uid.clone(),
        name: series.name.clone(),
        modality: series.modality.clone(),
        planes: grid.planes.clone(),
        header: series.header.clone(),
        location: series.location.clone(),
    };
    Ok((Volume { data, geometry }, reference))
}

impl SeriesReference {
    /// FrameOfReferenceUID of the source (empty when it has none).
    pub fn frame_of_reference(&self) -> String {
        super::scan::text(&self.header, tags::FRAME_OF_REFERENCE_UID)
    }
}
