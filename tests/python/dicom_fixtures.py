"""DICOM series written by pydicom from known arrays, for the DICOM reader's tests.

Usage: dicom_fixtures.py CASE OUT_DIR   (CASE `nifti:FILE` writes an axial series of a NIfTI volume)

Each case writes one folder of DICOM files (a series, several series, or a series with a defect) from an
array made here, with the geometry and encoding the case names. The Rust tests compare what autopath reads
with what dcm2niix converts from the same files, and check the refusals.
"""

import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

STUDY = "1.2.826.0.1.3680043.8.498.1000"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.1001"


def image(shape, seed):
    """A smooth phantom with a bright off-centre ball, so flips and slice order show."""
    d, h, w = shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    rng = np.random.default_rng(seed)
    ball = ((z - d * 0.3) ** 2 + (y - h * 0.35) ** 2 + (x - w * 0.6) ** 2) < (min(shape) * 0.3) ** 2
    data = 40 * z + 3 * y + x + 600 * ball + rng.integers(0, 20, shape)
    return data.astype(np.int16)


def unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def write_series(out, data, *, row=(1, 0, 0), col=(0, 1, 0), spacing=(0.8, 0.7), step=2.5, origin=(-100, -80, 50),
                 slope=1.0, intercept=-1024.0, syntax=ExplicitVRLittleEndian, modality="CT", order="shuffled",
                 series_number=3, description="Abdomen 2.5mm", tilt=None, skip=(), series_uid=None, positions=None,
                 orientations=None):
    """Writes one slice per file. `spacing` = (row spacing, column spacing) as PixelSpacing; slices go
    along row × col by `step` mm (or along `tilt` when given, for gantry tilt)."""
    out.mkdir(parents=True, exist_ok=True)
    row = unit(row)
    col = unit(np.asarray(col, float) - np.dot(col, row) * row)  # orthogonal, as scanners write them
    normal = np.cross(row, col)
    direction = unit(tilt) * step if tilt is not None else normal * step
    series_uid = series_uid or generate_uid()
    stored = np.round((data.astype(float) - intercept) / slope).astype(np.int16)
    n = data.shape[0]
    names = list(range(n))
    if order == "shuffled":
        names = list(np.random.default_rng(7).permutation(n))
    elif order == "reversed":
        names = names[::-1]
    for k in range(n):
        if k in skip:
            continue
        pos = np.asarray(origin, float) + k * direction if positions is None else np.asarray(positions[k], float)
        r, c = (row, col) if orientations is None else (unit(orientations[k][0]), unit(orientations[k][1]))
        ds = slice_dataset(stored[k], r, c, pos, spacing, modality, series_uid, series_number, description)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        # Instance numbers run against the file names, so neither can be trusted for the order.
        ds.InstanceNumber = n - k
        save(ds, out / f"IM{names[k]:04d}.dcm", syntax)
    return series_uid


def slice_dataset(pixels, row, col, pos, spacing, modality, series_uid, series_number, description):
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "Phantom^Test", "AP0001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261201", "101500", "1", "A1"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    ds.SliceThickness = "9.9"  # deliberately wrong: spacing comes from the positions
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds, path, syntax):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax == RLELossless:
        ds.compress(RLELossless)
    else:
        meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def jpeg_series(out, data):
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    pixels = np.clip(np.round(data), 0, 255).astype(np.uint8)
    for k in range(pixels.shape[0]):
        ds = slice_dataset(pixels[k], unit((1, 0, 0)), unit((0, 1, 0)), np.array([0.0, 0.0, 3.0 * k]), (0.9, 0.9), "MR",
                           series_uid, 5, "T1 jpeg")
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        buf = io.BytesIO()
        Image.fromarray(pixels[k]).save(buf, format="JPEG", quality=90)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.file_meta = meta
        ds.save_as(out / f"IM{k:04d}.dcm", enforce_file_format=True)
    decoded = np.stack([pydicom.dcmread(out / f"IM{k:04d}.dcm").pixel_array for k in range(pixels.shape[0])])
    decoded.astype("<f4").tofile(out.parent / f"{out.name}-decoded.f32")


def structured_report(out, series_uid):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    ds.Modality, ds.PatientID = "SR", "AP0001"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    save(ds, out / "report.dcm", ExplicitVRLittleEndian)


def enhanced(out, data, spacing=(0.9, 0.8), step=3.0):
    """One enhanced multi-frame MR file: geometry in the functional groups."""
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "Phantom^Test", "AP0001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, generate_uid()
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "MR", 7, "T1 enhanced"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.NumberOfFrames = data.shape[0]
    ds.Rows, ds.Columns = data.shape[1:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    row, col = unit((1, 0.1, 0)), unit((-0.1, 1, 0))
    shared = Dataset()
    orient, measures, transform = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
    measures.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
    measures.SliceThickness = "3"
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "2", "-100", "US"
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    normal = np.cross(row, col)
    frames = []
    for k in range(data.shape[0]):
        f, p = Dataset(), Dataset()
        p.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-60.0, -50.0, 10.0]) + k * step * normal]
        f.PlanePositionSequence = [p]
        frames.append(f)
    ds.PerFrameFunctionalGroupsSequence = frames
    stored = np.round((data.astype(float) + 100) / 2).astype(np.int16)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    save(ds, out / "enhanced.dcm", ExplicitVRLittleEndian)


def main(case, out):
    out = Path(out)
    shape = (12, 40, 36)
    data = image(shape, seed=1).astype(float) * 1.0 - 1000
    if case == "axial":
        write_series(out, data)
    elif case == "axial-feet-first":
        # Slices stepping towards the feet, implicit VR, rescale 0.5.
        write_series(out, data, step=-3.0, slope=0.5, intercept=-1000, syntax=ImplicitVRLittleEndian, order="reversed")
    elif case in ("sagittal", "sagittal-deflated"):
        # dcm2niix reads no deflated files: the test compares the deflated series with its plain twin.
        syntax = DeflatedExplicitVRLittleEndian if case == "sagittal-deflated" else ExplicitVRLittleEndian
        write_series(out, data, row=(0, 1, 0), col=(0, 0, -1), spacing=(1.1, 0.9), step=1.7, modality="MR",
                     intercept=0, syntax=syntax, description="T2 sag")
    elif case == "coronal":
        write_series(out, data, row=(1, 0, 0), col=(0, 0, -1), spacing=(0.6, 0.6), step=2.0, syntax=RLELossless)
    elif case == "oblique":
        write_series(out, data, row=(0.95, 0.3, 0.0), col=(-0.1, 0.3, -0.95), spacing=(0.75, 0.8), step=1.25)
    elif case == "enhanced":
        enhanced(out, image((6, 24, 20), seed=3).astype(float))
    elif case == "two-series":
        a = write_series(out / "a", data, series_number=3, description="Abdomen 2.5mm")
        write_series(out / "b" / "deep", data[:5], series_number=4, description="Abdomen/thin*", step=1.0,
                     order="reversed")
        structured_report(out / "a", a)
    elif case == "missing-slice":
        write_series(out, data, skip=(5,))
    elif case == "gantry-tilt":
        write_series(out, data, tilt=(0, 0.26, 1.0))
    elif case == "mixed-orientation":
        orientations = [((1, 0, 0), (0, 1, 0))] * shape[0]
        orientations[4] = ((1, 0, 0), (0, 0.9, -0.43))
        write_series(out, data, orientations=orientations)
    elif case == "single-slice":
        write_series(out, data[:1])
    elif case == "unsupported-syntax":
        write_series(out, data[:3])
        path = sorted(out.glob("*.dcm"))[0]
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\x00\x00\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    elif case == "jpeg-baseline":
        # 8-bit MR slices as JPEG baseline (Pillow encodes, pydicom encapsulates); OUT-decoded.f32 beside it holds
        # what pydicom decodes (through Pillow) as raw little-endian float32 [slice, row, column].
        jpeg_series(out, (data - data.min()) * 255.0 / (data.max() - data.min()))
    elif case == "zips":
        # series.zip (one series), two.zip (two series), escape.zip (an entry pointing outside).
        write_series(out / "series", data, row=(0.95, 0.3, 0.0), col=(-0.1, 0.3, -0.95), spacing=(0.75, 0.8), step=1.25)
        write_series(out / "other", data[:4], series_number=9)
        with zipfile.ZipFile(out / "series.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted((out / "series").iterdir()):
                z.write(f, f"study/series/{f.name}")
        with zipfile.ZipFile(out / "two.zip", "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted((out / "series").iterdir()) + sorted((out / "other").iterdir()):
                z.write(f, f"{f.parent.name}/{f.name}")
        with zipfile.ZipFile(out / "escape.zip", "w") as z:
            z.writestr("../../escaped.dcm", b"x")
    elif case.startswith("nifti:"):
        # An axial series of a NIfTI volume (nibabel reads it), for timing the reader on real sizes.
        import nibabel as nib

        img = nib.load(case[len("nifti:"):])
        volume = np.asarray(img.dataobj).transpose(2, 1, 0)[:, ::-1, :]  # [slice, row, column]
        zooms = img.header.get_zooms()
        write_series(out, volume.astype(float), spacing=(float(zooms[1]), float(zooms[0])), step=float(zooms[2]),
                     order="sorted")
    else:
        raise SystemExit(f"unknown case {case}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
