//! DICOM in and DICOM SEG out, through the dicom-rs crates.
//!
//! [`scan`] reads the headers (not the pixels) of a file or a folder tree, groups the image files by
//! SeriesInstanceUID and notes what it skips (structured reports, segmentations, presentation states,
//! files that are not DICOM). [`read_series`] then decodes one series at a time into a [`Volume`] laid
//! out as dcm2niix writes it: slices sorted along the normal of ImageOrientationPatient, rows counted up
//! from the last one, LPS turned into RAS, RescaleSlope/Intercept applied. Memory is bounded by the
//! series being read, not by the folder. [`write_seg`] writes a label map as a DICOM SEG that references
//! the source series frame by frame.

mod geometry;
mod read;
mod scan;
mod seg;

pub use read::{read_series, SeriesReference};
pub use scan::{is_dicom_file, scan, scan_beside, Scan, Series};
pub use seg::{write_seg, SegmentDescription};

pub use crate::input::volume::Volume;
