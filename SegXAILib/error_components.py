"""Where a segmentation disagrees with its reference: the largest false-positive and missed regions, each with its
volume, median HU and centre in RAS, so that an error can be found on screen and named (the heart, the pelvis).

A Dice says how much is wrong; these say what. MODELS.md's "where the left-out models fail" is read off them.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .postprocessing import FULL_CONNECTIVITY  # regions counted as the post-processing counts components
from .volume import Volume


def error_components(pred: np.ndarray, ref: np.ndarray, image: Volume, limit: int = 3, min_ml: float = 1.0) -> list:
    """The ``limit`` largest connected false-positive and missed regions of at least ``min_ml`` each.

    ``pred`` and ``ref`` are boolean (K, J, I) masks on ``image``'s grid. Each region: kind, volume_ml, median_hu
    (of ``image`` inside it) and centre_ras (mm), largest first within each kind.
    """
    if pred.shape != image.shape or ref.shape != image.shape:
        raise ValueError(f"masks {pred.shape} and {ref.shape} must lie on the image's grid {image.shape}")
    rows = []
    for kind, wrong in (("false positive", pred & ~ref), ("missed", ref & ~pred)):
        labelled, n = ndimage.label(wrong, structure=FULL_CONNECTIVITY)
        if n == 0:
            continue
        sizes = np.bincount(labelled.ravel())[1:]
        boxes = ndimage.find_objects(labelled)  # each region is read inside its bounding box, not the whole volume
        largest = np.argsort(-sizes, kind="stable")[:limit] + 1
        for label in largest:
            ml = float(sizes[label - 1]) * image.voxel_volume_ml
            if ml < min_ml:
                break
            box = boxes[label - 1]
            region = labelled[box] == label
            k, j, i = np.array(ndimage.center_of_mass(region)) + [b.start for b in box]
            centre = image.ijk_to_ras @ np.array([i, j, k, 1.0])
            rows.append({"kind": kind, "volume_ml": round(ml, 1), "median_hu": round(float(np.median(image.array[box][region])), 1),
                         "centre_ras": [round(float(c), 1) for c in centre[:3]]})
    return rows


def describe(rows: list) -> str:
    """One line per region, e.g. 'false positive 369.0 mL, median 121 HU, centre RAS (-14.2, 30.1, 152.0)'."""
    return "\n".join(f"{r['kind']} {r['volume_ml']:.1f} mL, median {r['median_hu']:.0f} HU, centre RAS "
                     f"({', '.join(f'{c:.1f}' for c in r['centre_ras'])})" for r in rows)
