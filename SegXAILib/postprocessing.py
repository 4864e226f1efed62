"""Label clean-up the card asks for: keep each organ's largest connected component, and keep a lesion
class only where it touches its host organ (liver tumour inside the liver)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: a component is what touches at a corner too


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (the mask itself when empty)."""
    labelled, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()


def touching(mask: np.ndarray, host: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that overlap or touch ``host``."""
    labelled, n = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    if n == 0:
        return mask
    near = ndimage.binary_dilation(host, structure=FULL_CONNECTIVITY)
    keep = np.unique(labelled[near & mask])
    return np.isin(labelled, keep[keep > 0])


def postprocess(labels: np.ndarray, classes: list, rules: dict) -> np.ndarray:
    """Apply ``rules`` ({"largest_component": [names], "inside": {lesion: host}}) to a label array.

    A host organ's component is computed together with its lesions (a tumour can split the liver in two);
    removed voxels become background. Returns a new array.
    """
    out = labels.copy()
    value = {c.name: c.value for c in classes}
    inside = {k: v for k, v in rules.get("inside", {}).items() if k in value and v in value}
    for name in rules.get("largest_component", []):
        if name not in value:
            continue
        lesions = [value[l] for l, host in inside.items() if host == name]
        organ = np.isin(out, [value[name]] + lesions)
        if not organ.any():
            continue
        keep = largest_component(organ)
        out[organ & ~keep] = 0
    for lesion, host in inside.items():
        mask = out == value[lesion]
        if mask.any():
            out[mask & ~touching(mask, out == value[host])] = 0
    return out
