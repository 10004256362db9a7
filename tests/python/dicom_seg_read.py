"""Reads a DICOM SEG with highdicom against its source series and prints what it holds as JSON.

Usage: dicom_seg_read.py SEG SOURCE_DIR

Prints {"segments": [{"number", "label", "type"}], "shape": [slices, rows, columns],
"masks": {"<number>": "0101…"}, "positions_match": bool, "orientation_match": bool,
"series_match": bool, "frame_of_reference_match": bool}. Each mask is flattened in source slice order
(slices sorted along the normal of their orientation), rows and columns as stored in the source.
"""

import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom


def main(seg_path, source_dir):
    seg = hd.seg.segread(seg_path)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    sources = [pydicom.dcmread(p) for p in sorted(Path(source_dir).rglob("*.dcm"))]
    sources = [s for s in sources if "PixelData" in s]
    by_frame = {}  # (source instance, frame number or None) -> SEG frame position
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
        key = (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None)
        by_frame[key] = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    if "PerFrameFunctionalGroupsSequence" in sources[0]:
        # An enhanced multi-frame source: its frames are the slices.
        src = sources[0]
        iop = np.array(src.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
        planes = [((src.SOPInstanceUID, f + 1), np.array(g.PlanePositionSequence[0].ImagePositionPatient, dtype=float))
                  for f, g in enumerate(src.PerFrameFunctionalGroupsSequence)]
    else:
        iop = np.array(sources[0].ImageOrientationPatient, dtype=float)
        planes = [((s.SOPInstanceUID, None), np.array(s.ImagePositionPatient, dtype=float)) for s in sources]
    normal = np.cross(iop[:3], iop[3:])
    planes.sort(key=lambda p: float(np.dot(p[1], normal)))
    if planes[0][0][1] is None:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[key[0] for key, _ in planes], segment_numbers=numbers, combine_segments=False
        )  # (slices, rows, columns, segments)
    else:
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=planes[0][0][0], source_frame_numbers=[key[1] for key, _ in planes],
            segment_numbers=numbers, combine_segments=False,
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    seg_iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    positions_match = all(np.allclose(by_frame[key], pos, atol=1e-4) for key, pos in planes)
    out = {
        "segments": [
            {
                "number": int(s.SegmentNumber),
                "label": str(s.SegmentLabel),
                "type": str(s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning),
            }
            for s in seg.SegmentSequence
        ],
        "shape": list(pixels.shape[:3]),
        "masks": {
            str(n): "".join("1" if v else "0" for v in pixels[..., i].astype(bool).ravel())
            for i, n in enumerate(numbers)
        },
        "positions_match": bool(positions_match),
        "orientation_match": bool(np.allclose(seg_iop, iop, atol=1e-5)),
        "series_match": seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID,
        "frame_of_reference_match": seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID,
        "study_match": seg.StudyInstanceUID == sources[0].StudyInstanceUID,
        "patient_match": seg.PatientID == sources[0].PatientID,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
