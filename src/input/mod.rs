//! What the network reads: NIfTI volumes and DICOM series, intensity preprocessing and sliding windows, applying the
//! settings of the bundle's input contract (`autopath_bundle::input`). Shared by training, the study
//! and deployment.

pub mod dicom;
pub mod preprocess;
pub mod source;
pub mod volume;
pub mod window;
