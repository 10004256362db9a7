//! A label map written as a DICOM SEG (binary segmentation, one segment per label), on the source
//! series' frames and referencing them, so a PACS or viewer shows it over the images it came from.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::Array3;

use super::read::SeriesReference;
use crate::atomic::write_atomically;
use crate::error::{Error, Result};

/// Patient, study and frame-of-reference attributes copied from the source into the SEG (the series'
/// own number, description and modality are kept for naming and replaced in the SEG).
pub(crate) const COPIED_FROM_SOURCE: [Tag; 15] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_INSTANCE_UID,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::STUDY_ID,
    tags::STUDY_DESCRIPTION,
    tags::ACCESSION_NUMBER,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::FRAME_OF_REFERENCE_UID,
    tags::SERIES_NUMBER,
    tags::SERIES_DESCRIPTION,
    tags::MODALITY,
];

const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// One segment: its number (the label value) and name.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentDescription {
    /// Label value in the label map, ≥ 1; the segment number in the SEG.
    pub number: u8,
    /// SegmentLabel, from the bundle's label names.
    pub label: String,
}

/// Writes `labels` (on the grid [`super::read_series`] gave for `source`) as a DICOM SEG at `path`: one
/// binary segment per entry of `segments` (voxels equal to its number), one frame per segment and source
/// slice, each referencing its source instance. Atomic: the file appears whole or not at all.
pub fn write_seg(
    path: &Path,
    labels: &Array3<u8>,
    source: &SeriesReference,
    segments: &[SegmentDescription],
) -> Result<()> {
    let [d, h, w] = [labels.dim().0, labels.dim().1, labels.dim().2];
    if d != source.planes.len() || source.planes.first().is_some_and(|p| (p.rows, p.columns) != (h as u32, w as u32)) {
        return Err(Error::invalid(
            "DICOM SEG",
            format!("{}: labels {:?} are not on the source grid", path.display(), labels.dim()),
        ));
    }
    let uid_seed = source.series_uid.as_str();
    let mut obj = source.header.clone();
    let series_uid = derived_uid(&[uid_seed, "series", &content_hash(labels)]);
    let instance_uid = derived_uid(&[uid_seed, "instance", &content_hash(labels)]);
    put_module_attributes(&mut obj, source, &series_uid, &instance_uid, [h, w], segments.len() * d);
    obj.put(sequence(tags::SEGMENT_SEQUENCE, segments.iter().map(segment_item).collect()));
    put_dimensions(&mut obj, &instance_uid);
    put_shared_groups(&mut obj, source);
    obj.put(sequence(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame_groups(source, segments)));
    obj.put(referenced_series(source));
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pack_frames(labels, segments).into())));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SEGMENTATION_STORAGE)
        .media_storage_sop_instance_uid(instance_uid.as_str())
        .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid("2.25.208513254148442342036410342616437640107")
        .implementation_version_name("AUTOPATH");
    let file = obj.with_meta(meta).map_err(|e| Error::invalid("DICOM SEG", format!("{}: {e}", path.display())))?;
    write_atomically(path, |tmp| {
        file.write_to_file(tmp).map_err(|e| Error::invalid("DICOM SEG", format!("{}: {e}", path.display())))
    })
}

fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn texts(tag: Tag, vr: VR, values: &[String]) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Strs(values.iter().cloned().collect()))
}

fn us(tag: Tag, values: &[u16]) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::U16(values.iter().copied().collect()))
}

fn ul(tag: Tag, values: &[u32]) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UL, PrimitiveValue::U32(values.iter().copied().collect()))
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A decimal string of at most 16 characters (the DS limit).
fn ds(v: f64) -> String {
    let mut s = format!("{v:.6}");
    while s.len() > 16 || (s.contains('.') && (s.ends_with('0') || s.ends_with('.'))) {
        if s.ends_with('.') {
            s.pop();
            break;
        }
        s.pop();
    }
    s
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// SNOMED CT category and type codes for a label name; names we do not know are "Tissue".
fn property_codes(label: &str) -> (InMemDicomObject, InMemDicomObject) {
    let name = label.to_lowercase();
    let anatomy = || code("123037004", "SCT", "Anatomical Structure");
    match name.as_str() {
        "liver" => (anatomy(), code("10200004", "SCT", "Liver")),
        "brain" => (anatomy(), code("12738006", "SCT", "Brain")),
        "kidney" => (anatomy(), code("64033007", "SCT", "Kidney")),
        "tumour" | "tumor" | "lesion" | "neoplasm" => {
            (code("49755003", "SCT", "Morphologically Altered Structure"), code("108369006", "SCT", "Neoplasm"))
        }
        _ => (code("85756007", "SCT", "Tissue"), code("85756007", "SCT", "Tissue")),
    }
}

fn segment_item(s: &SegmentDescription) -> InMemDicomObject {
    let (category, kind) = property_codes(&s.label);
    item(vec![
        us(tags::SEGMENT_NUMBER, &[s.number as u16]),
        text(tags::SEGMENT_LABEL, VR::LO, &s.label),
        text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "AutoPath"),
        sequence(tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, vec![category]),
        sequence(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![kind]),
    ])
}

fn put_module_attributes(
    obj: &mut InMemDicomObject,
    source: &SeriesReference,
    series_uid: &str,
    instance_uid: &str,
    [h, w]: [usize; 2],
    frames: usize,
) {
    let (date, time) = now_utc();
    let source_number = super::scan::text(&source.header, tags::SERIES_NUMBER).parse::<i64>().unwrap_or(0);
    let elements = vec![
        text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        text(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, instance_uid),
        text(tags::MODALITY, VR::CS, "SEG"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
        text(tags::SERIES_NUMBER, VR::IS, &(source_number + 1000).to_string()),
        text(tags::SERIES_DESCRIPTION, VR::LO, "AutoPath segmentation"),
        text(tags::INSTANCE_NUMBER, VR::IS, "1"),
        text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        text(tags::MANUFACTURER, VR::LO, "AutoPath"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "autopath"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        text(tags::CONTENT_DATE, VR::DA, &date),
        text(tags::CONTENT_TIME, VR::TM, &time),
        text(tags::CONTENT_LABEL, VR::CS, "AUTOPATH"),
        text(tags::CONTENT_DESCRIPTION, VR::LO, "Image-specific 3D segmentation"),
        text(tags::CONTENT_CREATOR_NAME, VR::PN, "AutoPath"),
        texts(tags::IMAGE_TYPE, VR::CS, &["DERIVED".into(), "PRIMARY".into()]),
        us(tags::SAMPLES_PER_PIXEL, &[1]),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, &[h as u16]),
        us(tags::COLUMNS, &[w as u16]),
        us(tags::BITS_ALLOCATED, &[1]),
        us(tags::BITS_STORED, &[1]),
        us(tags::HIGH_BIT, &[0]),
        us(tags::PIXEL_REPRESENTATION, &[0]),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        text(tags::NUMBER_OF_FRAMES, VR::IS, &frames.to_string()),
    ];
    for e in elements {
        obj.put(e);
    }
}

/// Frames are indexed by segment, then by position along the slices.
fn put_dimensions(obj: &mut InMemDicomObject, instance_uid: &str) {
    let organisation = derived_uid(&[instance_uid, "dimensions"]);
    let index = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organisation),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::Tags([pointer].into_iter().collect()),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::Tags([group].into_iter().collect()),
            ),
            text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    obj.put(sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(vec![text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organisation)])],
    ));
    obj.put(sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(tags::REFERENCED_SEGMENT_NUMBER, tags::SEGMENT_IDENTIFICATION_SEQUENCE, "ReferencedSegmentNumber"),
            index(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "ImagePositionPatient"),
        ],
    ));
}

fn put_shared_groups(obj: &mut InMemDicomObject, source: &SeriesReference) {
    let first = &source.planes[0];
    let n = source.planes.len();
    let last = &source.planes[n - 1];
    let gap =
        (0..3).map(|a| (last.position[a] - first.position[a]).powi(2)).sum::<f64>().sqrt() / (n - 1).max(1) as f64;
    let orientation: Vec<String> = first.orientation.iter().map(|v| ds(*v)).collect();
    let spacing: Vec<String> = first.spacing.iter().map(|v| ds(*v)).collect();
    let shared = item(vec![
        sequence(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![texts(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &orientation)])],
        ),
        sequence(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                texts(tags::PIXEL_SPACING, VR::DS, &spacing),
                text(tags::SLICE_THICKNESS, VR::DS, &ds(gap)),
                text(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(gap)),
            ])],
        ),
    ]);
    obj.put(sequence(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
}

fn per_frame_groups(source: &SeriesReference, segments: &[SegmentDescription]) -> Vec<InMemDicomObject> {
    let mut frames = Vec::with_capacity(segments.len() * source.planes.len());
    for s in segments {
        for (k, p) in source.planes.iter().enumerate() {
            let position: Vec<String> = p.position.iter().map(|v| ds(*v)).collect();
            let mut reference = vec![
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &p.sop_class_uid),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &p.sop_instance_uid),
                sequence(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![code("121322", "DCM", "Source image for image processing operation")],
                ),
                // The SEG's frames are the source's pixels, unresampled.
                text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"),
            ];
            if source.planes.iter().any(|q| q.sop_instance_uid == p.sop_instance_uid && q.frame != p.frame) {
                reference.push(DataElement::new(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    PrimitiveValue::from((p.frame + 1).to_string()),
                ));
            }
            let derivation = item(vec![
                sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![item(reference)]),
                sequence(tags::DERIVATION_CODE_SEQUENCE, vec![code("113076", "DCM", "Segmentation")]),
            ]);
            frames.push(item(vec![
                sequence(tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]),
                sequence(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item(vec![ul(tags::DIMENSION_INDEX_VALUES, &[s.number as u32, k as u32 + 1])])],
                ),
                sequence(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(vec![texts(tags::IMAGE_POSITION_PATIENT, VR::DS, &position)])],
                ),
                sequence(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![us(tags::REFERENCED_SEGMENT_NUMBER, &[s.number as u16])])],
                ),
            ]));
        }
    }
    frames
}

fn referenced_series(source: &SeriesReference) -> DataElement<InMemDicomObject> {
    let mut seen = std::collections::HashSet::new();
    let instances = source
        .planes
        .iter()
        .filter(|p| seen.insert(p.sop_instance_uid.clone()))
        .map(|p| {
            item(vec![
                text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &p.sop_class_uid),
                text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &p.sop_instance_uid),
            ])
        })
        .collect();
    let series = item(vec![
        text(tags::SERIES_INSTANCE_UID, VR::UI, &source.series_uid),
        sequence(tags::REFERENCED_INSTANCE_SEQUENCE, instances),
    ]);
    sequence(tags::REFERENCED_SERIES_SEQUENCE, vec![series])
}

/// One bit per pixel, frames one after another (segment by segment, slice by slice), first pixel in the
/// lowest bit; source row r of slice k is row h−1−r of the volume.
fn pack_frames(labels: &Array3<u8>, segments: &[SegmentDescription]) -> Vec<u8> {
    let (d, h, w) = labels.dim();
    let bits = segments.len() * d * h * w;
    let mut out = vec![0u8; bits.div_ceil(8).next_multiple_of(2)];
    let mut t = 0usize;
    for s in segments {
        for k in 0..d {
            for r in 0..h {
                for &v in labels.slice(ndarray::s![k, h - 1 - r, ..]).iter() {
                    if v == s.number {
                        out[t / 8] |= 1 << (t % 8);
                    }
                    t += 1;
                }
            }
        }
    }
    out
}

fn content_hash(labels: &Array3<u8>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(labels.as_slice().unwrap_or(&[]));
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A UID under the 2.25 root (ISO/IEC 9834-8): the decimal of 128 bits hashed from `parts`, so the same
/// segmentation of the same series gets the same UIDs.
fn derived_uid(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let bytes: [u8; 16] = h.finalize()[..16].try_into().unwrap_or([0; 16]);
    format!("2.25.{}", u128::from_be_bytes(bytes) >> 1)
}

/// Today's date (YYYYMMDD) and time (HHMMSS) in UTC.
fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}
