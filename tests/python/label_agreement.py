"""Agreement of two folders of label maps, read with nibabel, and each one's Dice against references.

Usage: label_agreement.py A B GT. For every NIfTI file `volume*` in A, the same name in B and, in GT, the file
named with `volume` replaced by `segmentation`. Prints JSON {"voxels": n, "agreement": fraction of
voxels with equal labels, "dice_a": mean foreground Dice of A, "dice_b": the same of B, "files": n}.
"""
import json, os, sys
import nibabel as nib
import numpy as np

a, b, gt = sys.argv[1:4]
voxels = equal = 0
dice_a, dice_b = [], []


def dice(p, g):
    both = p.sum() + g.sum()
    return 1.0 if both == 0 else 2.0 * (p & g).sum() / both


for f in sorted(os.listdir(a)):
    if not f.startswith("volume") or not f.endswith((".nii", ".nii.gz")):
        continue
    x = np.asarray(nib.load(os.path.join(a, f)).dataobj)
    y = np.asarray(nib.load(os.path.join(b, f)).dataobj)
    g = np.asarray(nib.load(os.path.join(gt, f.replace("volume", "segmentation"))).dataobj) > 0
    voxels += x.size
    equal += int((x == y).sum())
    dice_a.append(dice(x > 0, g))
    dice_b.append(dice(y > 0, g))
print(json.dumps({"voxels": voxels, "agreement": equal / max(voxels, 1), "dice_a": float(np.mean(dice_a)),
                  "dice_b": float(np.mean(dice_b)), "files": len(dice_a)}))
