"""A review case's reference segmentation: its mask of the explained class on the input grid, and the metrics of
the predicted class against it (Dice, IoU, sensitivity, precision, HD95, volumes), as ``segxai evaluate`` scores.

The reference is read as ``segxai explain --reference`` reads it (:func:`SegXAILib.scoring.reference_mask`): the
voxels of the class's label value when the volume has it, else every non-zero voxel (a single-organ mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SegXAIError

#: the metrics shown, in order, with their plain names and what is good
METRICS = (("dice", "Dice", "higher is better (1: the same voxels)"),
           ("iou", "IoU (Jaccard)", "higher is better (1: the same voxels)"),
           ("sensitivity", "Sensitivity (reference found)", "higher is better"),
           ("precision", "Precision (prediction correct)", "higher is better"),
           ("hd95_mm", "HD95 (mm)", "lower is better: 95th percentile of the surface distances"),
           ("volume_pred_ml", "Volume predicted (mL)", ""),
           ("volume_ref_ml", "Volume reference (mL)", ""))


@dataclass
class Reference:
    """The reference mask of the explained class on the labels' (input) grid and the metrics against it."""

    path: Path
    read_as: str           # how the class was found in the file ("label value 1", "non-zero voxels")
    mask: np.ndarray       # (K, J, I) bool on the labels' grid
    metrics: dict          # mask_metrics of the predicted class against ``mask``

    def rows(self) -> list:
        """``[{key, name, text, good}]`` for the page's metrics table."""
        out = []
        for key, name, good in METRICS:
            value = self.metrics.get(key)
            if value is None:
                continue
            out.append({"key": key, "name": name, "text": f"{value:.3g}", "good": good})
        return out


def read_reference(path, labels, class_value: int) -> Reference:
    """The reference of class ``class_value`` from the label volume at ``path``, taken to ``labels``' grid (nearest
    neighbour when the grids differ), and the predicted class's metrics against it. One clear error for a file that
    cannot be read or holds no voxel of the class."""
    from ..metrics import mask_metrics
    from ..scoring import reference_mask
    from ..volume import read_volume

    path = Path(path)
    if not path.is_file():
        raise SegXAIError(f"the reference {path} is not a file; give a label volume (NIfTI, NRRD, MHA) of the case")
    try:
        reference = read_volume(path)
    except SegXAIError:
        raise
    except Exception as error:  # a corrupt or foreign file: say which and what to give instead
        raise SegXAIError(f"cannot read the reference {path}: {error}; give a label volume (NIfTI, NRRD, MHA)") from None
    mask, how = reference_mask(reference, int(class_value), labels.grid)
    predicted = np.asarray(labels.array) == int(class_value)
    metrics = mask_metrics(predicted, mask, labels.spacing[::-1], labels.voxel_volume_ml)
    return Reference(path, how, mask, {k: float(v) for k, v in metrics.items()})
