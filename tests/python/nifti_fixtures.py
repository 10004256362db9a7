"""Writes NIfTI files with nibabel (an independent writer) and prints what a correct reader must see.

Usage: nifti_fixtures.py OUT_DIR. Prints JSON: {name: {shape_dhw, affine, pixdim, sum, first, last}}.
Values are given after scl_slope/scl_inter, as nibabel's get_fdata applies them.
"""
import json, sys
import numpy as np
import nibabel as nib

out = sys.argv[1]
rng = np.random.default_rng(7)
expect = {}


def save(name, data, affine, qform=None, sform=None, slope=None, inter=None, dtype=None, cls=nib.Nifti1Image):
    img = cls(data, affine)
    hdr = img.header
    if dtype is not None:
        hdr.set_data_dtype(dtype)
    if qform is not None:
        img.set_qform(qform[0], code=qform[1])
    if sform is not None:
        img.set_sform(sform[0], code=sform[1])
    if slope is not None:
        hdr['scl_slope'] = slope
        hdr['scl_inter'] = inter
    path = f"{out}/{name}"
    nib.save(img, path)
    back = nib.load(path)
    v = np.asarray(back.get_fdata(dtype=np.float64))
    if v.ndim == 4:
        v = v[..., 0]
    # Our array order is [k, j, i]: transpose nibabel's (i, j, k).
    v = np.transpose(v, (2, 1, 0))
    expect[name] = {
        "shape_dhw": list(v.shape),
        "affine": back.affine.tolist(),
        "pixdim": [float(x) for x in back.header["pixdim"][1:4]],
        "sum": float(v.sum()),
        "first": float(v.ravel()[0]),
        "last": float(v.ravel()[-1]),
        "probe": float(v[1, 2, 3]),
    }


shape = (11, 9, 7)  # (i, j, k)
rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
aff = np.eye(4)
aff[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
aff[:3, 3] = [-10.0, 20.0, 30.0]

for dt in ["uint8", "int16", "uint16", "int32", "float32", "float64"]:
    if dt == "uint8":
        d = rng.integers(0, 255, shape)
    elif dt.startswith("float"):
        d = rng.normal(0, 100, shape)
    else:
        d = rng.integers(0, 3000, shape) - (1000 if dt.startswith("int") else 0)
    save(f"{dt}.nii", d.astype(dt), aff)
save("int16_scaled.nii.gz", (rng.integers(-1000, 1000, shape)).astype("int16"), aff, slope=0.5, inter=-1024.0)
save("four_d_one_t.nii.gz", rng.normal(0, 1, shape + (1,)).astype("float32"), aff)
# qform only: sform code 0, qform says where the voxels are.
q_aff = aff.copy(); q_aff[:3, 3] = [1.0, 2.0, 3.0]
save("qform_only.nii", rng.normal(0, 1, shape).astype("float32"), aff, qform=(q_aff, 1), sform=(aff, 0))
# Both set and different: sform wins.
s_aff = aff.copy(); s_aff[:3, 3] = [5.0, 6.0, 7.0]
save("sform_and_qform.nii", rng.normal(0, 1, shape).astype("float32"), aff, qform=(q_aff, 1), sform=(s_aff, 2))
# NIfTI-2 (nibabel's format for large images): every type, scaling, and qform-only placement.
for dt in ["uint8", "int16", "uint16", "int32", "float32", "float64"]:
    d = rng.integers(0, 200, shape) if dt == "uint8" else rng.normal(0, 100, shape)
    save(f"nifti2_{dt}.nii.gz", d.astype(dt), aff, cls=nib.Nifti2Image)
save("nifti2_int16_scaled.nii", (rng.integers(-1000, 1000, shape)).astype("int16"), aff, slope=0.5, inter=-1024.0, cls=nib.Nifti2Image)
save("nifti2_qform_only.nii", rng.normal(0, 1, shape).astype("float32"), aff, qform=(q_aff, 1), sform=(aff, 0), cls=nib.Nifti2Image)
# Big-endian file.
img = nib.Nifti1Image(rng.integers(-500, 500, shape).astype(">i2"), aff)
nib.save(img, f"{out}/big_endian.nii")
back = nib.load(f"{out}/big_endian.nii")
v = np.transpose(np.asarray(back.get_fdata()), (2, 1, 0))
expect["big_endian.nii"] = {"shape_dhw": list(v.shape), "affine": back.affine.tolist(), "pixdim": [float(x) for x in back.header["pixdim"][1:4]], "sum": float(v.sum()), "first": float(v.ravel()[0]), "last": float(v.ravel()[-1]), "probe": float(v[1, 2, 3])}
print(json.dumps(expect))
