//! Finding the series in a file or a folder tree from the headers alone (reading stops before the pixel
//! data), so that listing a large archive costs little memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use super::geometry::{grid, Grid, Plane};
use crate::error::{Error, Result};

/// One series found by [`scan`]: its files and, unless it is refused, its grid.
#[derive(Debug, Clone)]
pub struct Series {
    /// SeriesInstanceUID.
    pub uid: String,
    /// A stable, filesystem-safe name: SeriesNumber, SeriesDescription and a hash of the UID, as in
    /// `3_Abdomen_2.5mm_1f0c93ab`.
    pub name: String,
    /// Modality (CT, MR, …).
    pub modality: String,
    /// The series' files, sorted by path.
    pub files: Vec<PathBuf>,
    /// The folder (or file) the series was found in, for messages.
    pub location: PathBuf,
    pub(crate) grid: std::result::Result<Grid, String>,
    /// Patient, study and frame-of-reference attributes of the first file, copied into DICOM SEG.
    pub(crate) header: InMemDicomObject,
}

impl Series {
    /// Voxels the series will decode to (known from the headers), or None when it is refused.
    pub fn voxels(&self) -> Option<usize> {
        self.grid.as_ref().ok().map(|g| g.shape.iter().product())
    }
}

/// What [`scan`] found: series, and one note per skipped file or group of files.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Image series, sorted by name.
    pub series: Vec<Series>,
    /// Files skipped and why ("report.dcm: SR object, not an image").
    pub notes: Vec<String>,
}

/// Whether `path` starts like a DICOM file: "DICM" after the 128-byte preamble.
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head[128..] == b"DICM"
}

/// Reads the headers of `path` (a DICOM file, or a folder searched recursively) and groups the images
/// into series. Files that are not DICOM, and DICOM objects that are not images, are noted and skipped.
pub fn scan(path: &Path) -> Result<Scan> {
    let mut files = Vec::new();
    collect(path, &mut files)?;
    scan_files(files, path)
}

/// [`scan`] of the files directly in `folder` (not its subfolders): where a single file's series lies.
pub fn scan_beside(folder: &Path) -> Result<Scan> {
    let files = std::fs::read_dir(folder)
        .map_err(|e| Error::io(folder, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    scan_files(files, folder)
}

fn scan_files(mut files: Vec<PathBuf>, path: &Path) -> Result<Scan> {
    files.sort();
    let mut scan = Scan::default();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for file in files {
        match classify(&file) {
            Ok(Found::Image(obj)) => {
                let uid = text(&obj, tags::SERIES_INSTANCE_UID);
                groups.entry(uid).or_insert_with(|| Group::new(&obj)).add(file, *obj);
            }
            Ok(Found::Skipped(why)) => scan.notes.push(format!("{}: {why}; skipped", file.display())),
            Err(why) => scan.notes.push(format!("{}: {why}; skipped", file.display())),
        }
    }
    for (uid, group) in groups {
        scan.series.push(group.finish(uid, path));
    }
    scan.series.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scan)
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let p = entry.map_err(|e| Error::io(path, e))?.path();
        let hidden = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

enum Found {
    Image(Box<InMemDicomObject>),
    Skipped(String),
}

/// SOP classes that hold no image to segment, by UID prefix.
const NOT_IMAGES: [(&str, &str); 7] = [
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.66", "segmentation or raw data"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.1.3.10", "DICOMDIR"),
    ("1.2.840.10008.5.1.4.1.1.7", "secondary capture"),
];

fn classify(file: &Path) -> std::result::Result<Found, String> {
    let obj: DefaultDicomObject = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(file)
        .map_err(|e| format!("not a readable DICOM file ({e})"))?;
    let sop_class = obj.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    let modality = text(&obj, tags::MODALITY);
    if let Some((_, what)) = NOT_IMAGES.iter().find(|(prefix, _)| sop_class.starts_with(prefix)) {
        return Ok(Found::Skipped(format!("{} object ({what}), not an image", or_unknown(&modality))));
    }
    if obj.element_opt(tags::ROWS).ok().flatten().is_none() {
        return Ok(Found::Skipped(format!("{} object without pixel rows, not an image", or_unknown(&modality))));
    }
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let mut inner = obj.into_inner();
    // The transfer syntax travels with the header for the series' checks.
    inner.put_str(tags::TRANSFER_SYNTAX_UID, dicom_core::VR::UI, ts);
    Ok(Found::Image(Box::new(inner)))
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "DICOM"
    } else {
        s
    }
}

/// A DICOM string value, trimmed; empty when absent.
pub(crate) fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().trim_end_matches('\0').to_string()))
        .unwrap_or_default()
}

/// Numbers of a DICOM value (DS, IS or binary), or None when absent or unreadable.
pub(crate) fn numbers(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_multi_float64().ok())
}

/// A series being gathered: its files' planes, or the first reason to refuse it.
struct Group {
    header: InMemDicomObject,
    files: Vec<PathBuf>,
    planes: Vec<Plane>,
    refused: Option<String>,
}

impl Group {
    fn new(obj: &InMemDicomObject) -> Self {
        let mut header = InMemDicomObject::new_empty();
        for tag in super::seg::COPIED_FROM_SOURCE {
            if let Some(e) = obj.element_opt(tag).ok().flatten() {
                header.put(e.clone());
            }
        }
        Group { header, files: Vec::new(), planes: Vec::new(), refused: None }
    }

    fn add(&mut self, file: PathBuf, obj: InMemDicomObject) {
        let index = self.files.len();
        match planes_of(&obj, index) {
            Ok(p) if self.refused.is_none() => self.planes.extend(p),
            Ok(_) => {}
            Err(why) => {
                self.refused.get_or_insert_with(|| format!("{}: {why}", file.display()));
            }
        }
        self.files.push(file);
    }

    fn finish(self, uid: String, location: &Path) -> Series {
        let modality = text(&self.header, tags::MODALITY);
        let name = series_name(&self.header, &uid);
        let grid = match self.refused {
            Some(why) => Err(why),
            None => grid(self.planes),
        };
        Series { uid, name, modality, files: self.files, location: location.to_path_buf(), grid, header: self.header }
    }
}

/// `SeriesNumber_SeriesDescription_hash`: letters, digits, `.` and `-` kept, anything else `_`.
fn series_name(header: &InMemDicomObject, uid: &str) -> String {
    use sha2::Digest;
    let number = text(header, tags::SERIES_NUMBER);
    let description = text(header, tags::SERIES_DESCRIPTION);
    let mut name = String::new();
    for part in [number.as_str(), description.as_str()].into_iter().filter(|p| !p.is_empty()) {
        if !name.is_empty() {
            name.push('_');
        }
        name.push_str(part);
    }
    let mut safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    safe.truncate(48);
    let hash = sha2::Sha256::digest(uid.as_bytes());
    let hash: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    if safe.is_empty() {
        format!("series_{hash}")
    } else {
        format!("{safe}_{hash}")
    }
}

/// The image planes of one file: one for a single-frame image, one per frame for an enhanced
/// multi-frame image (geometry from its functional groups).
fn planes_of(obj: &InMemDicomObject, file: usize) -> std::result::Result<Vec<Plane>, String> {
    let ts = text(obj, tags::TRANSFER_SYNTAX_UID);
    match TransferSyntaxRegistry.get(&ts) {
        Some(t) if t.can_decode_all() => {}
        Some(t) => {
            return Err(format!("pixel data in transfer syntax {ts} ({}), which autopath cannot decode", t.name()))
        }
        None => return Err(format!("pixel data in unknown transfer syntax {ts}")),
    }
    let samples = numbers(obj, tags::SAMPLES_PER_PIXEL).and_then(|v| v.first().copied()).unwrap_or(1.0);
    if samples != 1.0 {
        return Err(format!("{samples} samples per pixel (colour); CT and MR images have one"));
    }
    let dim = |tag| numbers(obj, tag).and_then(|v| v.first().copied()).unwrap_or(0.0);
    let (rows, columns) = (dim(tags::ROWS) as u32, dim(tags::COLUMNS) as u32);
    if rows == 0 || columns == 0 {
        return Err("Rows or Columns is zero".into());
    }
    let frames = dim(tags::NUMBER_OF_FRAMES).max(1.0) as u32;
    let base = Plane {
        file,
        frame: 0,
        position: [0.0; 3],
        orientation: [0.0; 6],
        spacing: [0.0; 2],
        rows,
        columns,
        sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
        sop_class_uid: text(obj, tags::SOP_CLASS_UID),
    };
    let per_frame = sequence(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    if per_frame.is_empty() {
        if frames > 1 {
            return Err(format!("{frames} frames without per-frame functional groups (no geometry per frame)"));
        }
        return Ok(vec![Plane {
            position: fixed(numbers(obj, tags::IMAGE_POSITION_PATIENT), "ImagePositionPatient")?,
            orientation: fixed(numbers(obj, tags::IMAGE_ORIENTATION_PATIENT), "ImageOrientationPatient")?,
            spacing: fixed(numbers(obj, tags::PIXEL_SPACING), "PixelSpacing")?,
            ..base
        }]);
    }
    if per_frame.len() != frames as usize {
        return Err(format!("{frames} frames but {} per-frame functional groups", per_frame.len()));
    }
    let shared = sequence(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).first().cloned();
    let in_groups = |frame: &InMemDicomObject, seq, tag| {
        [Some(frame), shared.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|g| sequence(g, seq).first().and_then(|item| numbers(item, tag)))
    };
    (0..frames)
        .map(|f| {
            let g = &per_frame[f as usize];
            Ok(Plane {
                frame: f,
                position: fixed(
                    in_groups(g, tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT),
                    "ImagePositionPatient",
                )?,
                orientation: fixed(
                    in_groups(g, tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT),
                    "ImageOrientationPatient",
                )?,
                spacing: fixed(in_groups(g, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING), "PixelSpacing")?,
                ..base.clone()
            })
        })
        .collect()
}

pub(crate) fn sequence(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<InMemDicomObject> {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.items().map(|i| i.to_vec())).unwrap_or_default()
}

fn fixed<const N: usize>(v: Option<Vec<f64>>, what: &str) -> std::result::Result<[f64; N], String> {
    let v = v.ok_or_else(|| format!("no {what}"))?;
    let a: [f64; N] = v.as_slice().try_into().map_err(|_| format!("{what} has {} values, expected {N}", v.len()))?;
    if a.iter().all(|x| x.is_finite()) {
        Ok(a)
    } else {
        Err(format!("{what} {a:?} is not finite"))
    }
}
