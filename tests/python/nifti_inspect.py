"""Reads NIfTI files with nibabel and prints, per file, what a viewer would use to place them.

Usage: nifti_inspect.py FILE... Prints JSON: {file: {shape, affine, qform_code, sform_code, qform,
sform, pixdim, dtype, unique (if <= 16 distinct values), sum, intent_code, intent_name, descrip}}.
"""
import json, sys
import numpy as np
import nibabel as nib

res = {}
for f in sys.argv[1:]:
    img = nib.load(f)
    h = img.header
    d = np.asarray(img.dataobj)
    u = np.unique(d)
    res[f] = {
        "shape": list(d.shape),
        "affine": img.affine.tolist(),
        "qform_code": int(h["qform_code"]),
        "sform_code": int(h["sform_code"]),
        "qform": img.get_qform().tolist(),
        "sform": img.get_sform().tolist(),
        "pixdim": [float(x) for x in h["pixdim"][:4]],
        "dtype": str(d.dtype),
        "unique": [float(x) for x in u] if len(u) <= 16 else None,
        "sum": float(d.astype(np.float64).sum()),
        "intent_code": int(h["intent_code"]),
        "intent_name": h["intent_name"].item().decode("latin-1"),
        "descrip": h["descrip"].item().decode("latin-1"),
    }
print(json.dumps(res))
