"""Overlap and distance metrics between a predicted and a reference mask, per class, in physical units."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple:
    """(TP, FP, FN, TN) voxel counts of two boolean masks."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(~pred & ref))
    return tp, fp, fn, int(pred.size - tp - fp - fn)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask: in the mask, with a 6-neighbour outside it."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _crop_to_both(pred: np.ndarray, ref: np.ndarray) -> tuple:
    """Both masks cut to their union's bounding box plus one empty voxel where the array allows: the surfaces and
    the distances between them stay exactly the same (a box edge is an array edge only where it was one), and the
    distance transforms run over the organ, not the whole CT."""
    where = np.argwhere(pred | ref)
    lo, hi = np.maximum(where.min(0) - 1, 0), np.minimum(where.max(0) + 2, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return pred[box], ref[box]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """95th percentile of symmetric surface distances in mm (inf if exactly one mask is empty, nan if both)."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return float("nan")
    if not pred.any() or not ref.any():
        return float("inf")
    pred, ref = _crop_to_both(pred, ref)
    sp, sr = surface(pred), surface(ref)
    # distance from every voxel to the nearest surface voxel of the other mask; spacing in array (K, J, I) order
    d_to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([d_to_ref[sp], d_to_pred[sr]])
    return float(np.percentile(distances, 95))


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing_kji, voxel_ml: float, with_hd95: bool = True) -> dict:
    """Dice, IoU, sensitivity, specificity, precision, accuracy, HD95 (mm), volumes (mL) of two masks."""
    tp, fp, fn, tn = confusion(pred, ref)
    out = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "volume_pred_ml": (tp + fp) * voxel_ml,
        "volume_ref_ml": (tp + fn) * voxel_ml,
    }
    out["volume_error_ml"] = out["volume_pred_ml"] - out["volume_ref_ml"]
    if with_hd95:
        out["hd95_mm"] = hd95(pred, ref, spacing_kji)
    return out


def per_class_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, classes: dict, spacing_kji, voxel_ml: float) -> dict:
    """Metrics for each class: ``classes`` maps a name to (predicted values, reference values)."""
    return {
        name: mask_metrics(np.isin(pred_labels, pv), np.isin(ref_labels, rv), spacing_kji, voxel_ml)
        for name, (pv, rv) in classes.items()
    }
