//! Where volumes come from: NIfTI files, or DICOM series found in a file or a folder tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dicom::{self, Series, SeriesReference};
use super::volume::{read_geometry, read_volume, ReadOptions, Volume};
use crate::error::{Error, Result};

/// One input volume.
#[derive(Debug, Clone)]
pub enum Source {
    /// A `.nii` or `.nii.gz` file.
    Nifti(PathBuf),
    /// A DICOM series (its files found by [`dicom::scan`]).
    Dicom(Arc<Series>),
}

/// The volumes of an input path, and what was skipped on the way.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Volumes, sorted (NIfTI by path, series by name).
    pub sources: Vec<Source>,
    /// Files skipped and why.
    pub notes: Vec<String>,
}

/// Whether a file name is NIfTI's (`.nii`, `.nii.gz`), not hidden.
pub fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    (n.ends_with(".nii") || n.ends_with(".nii.gz")) && !n.starts_with('.')
}

/// The volumes `input` holds: a NIfTI file; a folder of NIfTI files (not searched further); a DICOM
/// file (its whole series: the files beside it with its SeriesInstanceUID); or a folder tree of DICOM
/// files (every image series in it). Anything else is tried as NIfTI, whose reader says what is wrong.
pub fn find(input: &Path) -> Result<Inputs> {
    if input.is_file() {
        // DICOM by its "DICM" mark, or a file without one (no preamble) that still reads as an image.
        let dicom =
            !is_nifti(input) && (dicom::is_dicom_file(input) || dicom::scan(input).is_ok_and(|s| !s.series.is_empty()));
        if !dicom {
            return Ok(Inputs { sources: vec![Source::Nifti(input.to_path_buf())], notes: vec![] });
        }
        return series_of_file(input);
    }
    if !input.is_dir() {
        return Err(Error::invalid("-i", format!("{} does not exist", input.display())));
    }
    let mut nifti: Vec<PathBuf> = std::fs::read_dir(input)
        .map_err(|e| Error::io(input, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_nifti(p))
        .collect();
    if !nifti.is_empty() {
        nifti.sort();
        return Ok(Inputs { sources: nifti.into_iter().map(Source::Nifti).collect(), notes: vec![] });
    }
    let scan = dicom::scan(input)?;
    if scan.series.is_empty() {
        let mut reason = format!("{} holds no .nii or .nii.gz files and no DICOM image series", input.display());
        if !scan.notes.is_empty() {
            reason.push_str(&format!(" ({} files skipped: {})", scan.notes.len(), scan.notes[0]));
        }
        return Err(Error::invalid("-i", reason));
    }
    Ok(Inputs { sources: scan.series.into_iter().map(|s| Source::Dicom(Arc::new(s))).collect(), notes: scan.notes })
}

/// A single DICOM file stands for its series: the files beside it with the same SeriesInstanceUID.
fn series_of_file(file: &Path) -> Result<Inputs> {
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let own = dicom::scan(file)?;
    let Some(uid) = own.series.first().map(|s| s.uid.clone()) else {
        let why = own.notes.first().cloned().unwrap_or_default();
        return Err(Error::dicom(file, format!("not an image to segment ({why})")));
    };
    let mut scan = dicom::scan_beside(folder)?;
    scan.series.retain(|s| s.uid == uid);
    scan.notes.clear();
    Ok(Inputs { sources: scan.series.into_iter().map(|s| Source::Dicom(Arc::new(s))).collect(), notes: vec![] })
}

impl Source {
    /// The file or folder it came from.
    pub fn path(&self) -> &Path {
        match self {
            Source::Nifti(p) => p,
            Source::Dicom(s) => &s.location,
        }
    }

    /// How reports name it: the NIfTI path, or `folder (series name)`.
    pub fn describe(&self) -> String {
        match self {
            Source::Nifti(p) => p.display().to_string(),
            Source::Dicom(s) => format!("{} (series {})", s.location.display(), s.name),
        }
    }

    /// The output file name in a folder of outputs, for an output of `kind`.
    pub fn output_name(&self, kind: OutputType) -> String {
        match (self, kind) {
            (Source::Nifti(p), _) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            (Source::Dicom(s), OutputType::Nifti) => format!("{}.nii.gz", s.name),
            (Source::Dicom(s), OutputType::DicomSeg) => format!("{}.dcm", s.name),
        }
    }

    /// Voxels, from the headers alone (None when they cannot be read).
    pub fn voxels(&self, opts: &ReadOptions) -> Option<usize> {
        match self {
            Source::Nifti(p) => read_geometry(p, opts).ok().map(|g| g.voxels()),
            Source::Dicom(s) => s.voxels(),
        }
    }

    /// Reads the volume; a DICOM series also gives what a DICOM SEG of it references.
    pub fn read(&self, opts: &ReadOptions) -> Result<(Volume, Option<SeriesReference>)> {
        match self {
            Source::Nifti(p) => Ok((read_volume(p, opts)?, None)),
            Source::Dicom(s) => dicom::read_series(s, opts).map(|(v, r)| (v, Some(r))),
        }
    }
}

/// What a segmentation is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputType {
    /// A NIfTI label map on the input's grid (`.nii` or `.nii.gz`).
    #[default]
    Nifti,
    /// A DICOM SEG referencing the source series (`.dcm`); DICOM inputs only.
    DicomSeg,
}

impl OutputType {
    /// The type an output name asks for: `.dcm` is a DICOM SEG, anything else NIfTI.
    pub fn of(path: &Path) -> OutputType {
        let n = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if n.ends_with(".dcm") {
            OutputType::DicomSeg
        } else {
            OutputType::Nifti
        }
    }

    /// Whether `path` is a name of this type.
    pub fn accepts(self, path: &Path) -> bool {
        match self {
            OutputType::Nifti => is_nifti(path),
            OutputType::DicomSeg => OutputType::of(path) == OutputType::DicomSeg,
        }
    }

    /// The names it takes, for messages.
    pub fn names(self) -> &'static str {
        match self {
            OutputType::Nifti => "a .nii or .nii.gz name",
            OutputType::DicomSeg => "a .dcm name",
        }
    }
}

impl std::str::FromStr for OutputType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nifti" => Ok(OutputType::Nifti),
            "dicom-seg" => Ok(OutputType::DicomSeg),
            _ => Err(format!("{s:?}: expected nifti or dicom-seg")),
        }
    }
}
