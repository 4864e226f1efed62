"""A MONAI bundle's own pre-processing of one CT, and its own way back (``Invertd``), around a SegXAI `Volume`.

Forward: the volume is written to a temporary NIfTI file and the bundle's ``preprocessing`` Compose runs on
``{"image": path}`` exactly as the bundle's dataset would run it (its reader, orientation, spacing, intensity
scaling). The network input is MONAI's array (a0, a1, a2) as it is, so SegXAI's model grid has index
(i, j, k) = (a2, a1, a0) and IJK→RAS = MONAI's affine with its first three columns reversed.
Back: logits go through the bundle's ``postprocessing`` (activation, ``Invertd`` of the pre-processing, arg-max;
its savers left out); a bundle without ``Invertd`` gets MONAI's ``Invertd`` of its pre-processing appended,
so every output lies on the input grid. Single maps (explanations) go back by the same ``Invertd``.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ...errors import SegXAIError
from ...preprocessing import Preprocessed
from ...volume import LPS_TO_RAS, Grid, Volume

#: transforms dropped from the postprocessing because they write files or only report
SAVERS = ("SaveImage", "SaveImaged", "SaveClassificationd", "DataStatsd", "DataStats")
IMAGE, PRED = "image", "pred"


class BundleWindow:
    """HU → the network's input through the bundle's ``ScaleIntensityRanged`` steps (for baselines in HU);
    ``reason`` says why there is no fixed mapping (an image-dependent normalisation)."""

    def __init__(self, steps: list, reason: str = "") -> None:
        self.steps = steps  # [(a_min, a_max, b_min, b_max, clip)]
        self.reason = reason

    @property
    def range(self) -> list:
        """The HU range the first scaling step maps, [a_min, a_max] (or [0, 1] when unknown)."""
        return [float(self.steps[0][0]), float(self.steps[0][1])] if self.steps and not self.reason else [0.0, 1.0]

    def value_of(self, hu: float) -> float:
        if self.reason:
            raise SegXAIError(f"this bundle's pre-processing normalises intensities with {self.reason}, so a fixed "
                              "HU value has no fixed network input; use --baseline zero or blur")
        value = float(hu)
        for a_min, a_max, b_min, b_max, clip in self.steps:
            value = (value - a_min) / (a_max - a_min) if a_max != a_min else value - a_min
            if b_min is not None and b_max is not None:
                value = value * (b_max - b_min) + b_min
            if clip and b_min is not None and b_max is not None:
                value = min(max(value, b_min), b_max)
        return value


def window_of(preprocessing) -> BundleWindow:
    """The `BundleWindow` of a pre-processing Compose: its ScaleIntensityRanged steps on the image, in order."""
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRanged

    steps = []
    for t in getattr(preprocessing, "transforms", []):
        if IMAGE not in getattr(t, "keys", (IMAGE,)):
            continue
        scaler = t.scaler if isinstance(t, ScaleIntensityRanged) else t if isinstance(t, ScaleIntensityRange) else None
        if scaler is not None:
            steps.append((scaler.a_min, scaler.a_max, scaler.b_min, scaler.b_max, scaler.clip))
        elif type(t).__module__.startswith("monai.transforms.intensity"):
            return BundleWindow(steps, type(t).__name__)
    return BundleWindow(steps)


class BundlePreprocessed(Preprocessed):
    """The network's input on the bundle's grid, and the bundle's own way back to the input grid."""

    def __init__(self, image, grid, source, data: dict, preprocessing, postprocessing) -> None:
        super().__init__(image, grid, source)
        self.data = data  # the pre-processed dict: data[IMAGE] is a MetaTensor with its applied operations
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing

    @property
    def is_identity(self) -> bool:
        return False

    def _like_image(self, array) -> "object":
        """A MetaTensor (C, a0, a1, a2) carrying the pre-processed image's meta and applied operations, as the
        bundle's inferer returns its prediction."""
        import torch
        from monai.data import MetaTensor

        image = self.data[IMAGE]
        out = MetaTensor(torch.as_tensor(np.asarray(array, dtype=np.float32)), meta=copy.deepcopy(dict(image.meta)))
        out.applied_operations = copy.deepcopy(image.applied_operations)
        return out

    def _invert(self, pred, nearest: bool):
        from monai.transforms import Invertd

        invert = Invertd(keys=PRED, transform=self.preprocessing, orig_keys=IMAGE, nearest_interp=nearest,
                         to_tensor=True)
        return invert({**self.data, PRED: pred})[PRED]

    def _on_source(self, inverted, what: str) -> np.ndarray:
        """(C, K, J, I) numpy from MONAI's (C, i, j, k) output, checked to lie on the input grid."""
        array = np.asarray(inverted.detach().cpu().numpy() if hasattr(inverted, "detach") else inverted)
        if array.ndim != 4:
            raise SegXAIError(f"the bundle's postprocessing returns {what} of shape {array.shape}; SegXAI expects "
                              "(channels, x, y, z)")
        array = array.transpose(0, 3, 2, 1)
        if tuple(array.shape[1:]) != tuple(self.source.shape):
            raise SegXAIError(f"the bundle's postprocessing leaves {what} of shape {array.shape[1:]}, not the input's "
                              f"{tuple(self.source.shape)}; its Invertd does not undo its pre-processing")
        return array

    def to_source(self, array: np.ndarray, kind: str = "linear", default: float = 0.0) -> Volume:
        """A model-grid array back on the input grid by MONAI's ``Invertd`` (nearest for labels, else linear);
        outside the model grid MONAI's padding (the bundle's ``Spacingd`` padding mode) applies, not ``default``."""
        if tuple(array.shape) != tuple(self.grid.shape):
            raise SegXAIError(f"array of shape {array.shape} is not on the model grid {self.grid.shape}")
        if kind not in ("label", "linear"):
            raise ValueError(f"kind must be 'label' or 'linear', not {kind!r}")
        back = self._on_source(self._invert(self._like_image(array[None]), kind == "label"), "a map")[0]
        if kind == "label":
            return Volume(np.rint(back).astype(array.dtype), self.source.ijk_to_ras.copy())
        return Volume(back.astype(np.float32), self.source.ijk_to_ras.copy())

    def postprocess(self, logits):
        """The bundle's postprocessing of logits (C, a0, a1, a2) (savers left out; ``Invertd`` appended when it
        has none), as its evaluator runs it on one decollated prediction."""
        from monai.transforms import Invertd

        data = {**self.data, PRED: self._like_image(np.asarray(logits, dtype=np.float32))}
        inverted = False
        for t in getattr(self.postprocessing, "transforms", []):
            if type(t).__name__ in SAVERS:
                continue
            data = t(data)
            inverted |= isinstance(t, Invertd)
        pred = data[PRED]
        if not inverted:
            pred = self._invert(pred, nearest=pred.shape[0] == 1)
        return pred

    def labels_from_logits(self, logits) -> Volume:
        pred = self._on_source(self.postprocess(logits), "the prediction")
        labels = np.argmax(pred, axis=0) if pred.shape[0] > 1 else np.rint(pred[0])
        return Volume(labels.astype(np.uint8), self.source.ijk_to_ras.copy())

    def probabilities_from_logits(self, logits) -> np.ndarray:
        """Softmax probabilities (C, K, J, I) on the input grid, brought back by the bundle's ``Invertd`` (linear)."""
        import torch

        probabilities = torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float32)), 0).numpy()
        return self._on_source(self._invert(self._like_image(probabilities), False), "probabilities")


class BundlePreprocessing:
    """The forward transform of one bundle; ``window`` gives HU → network input for baselines."""

    def __init__(self, preprocessing, postprocessing, window: Optional[BundleWindow] = None) -> None:
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.window = window if window is not None else window_of(preprocessing)

    def __call__(self, volume: Volume) -> BundlePreprocessed:
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory(prefix="segxai-bundle-") as tmp:
            path = Path(tmp) / "image.nii"
            image = volume.to_sitk()
            if image.GetPixelID() == sitk.sitkFloat64:
                image = sitk.Cast(image, sitk.sitkFloat32)
            sitk.WriteImage(image, str(path), False)
            try:
                data = self.preprocessing({IMAGE: str(path)})
            except Exception as err:
                raise SegXAIError(f"the bundle's preprocessing failed on this image ({_first_line(err)})") from None
        if isinstance(data, list):
            raise SegXAIError("the bundle's preprocessing returns several samples per image (random crops?); SegXAI "
                              "needs one pre-processed image")
        image = data.get(IMAGE) if isinstance(data, dict) else None
        if image is None or not hasattr(image, "affine") or image.ndim != 4:
            raise SegXAIError("the bundle's preprocessing does not return a channel-first 3D MetaTensor under "
                              "'image' (is EnsureChannelFirstd or LoadImaged(ensure_channel_first=True) there?)")
        if image.shape[0] != 1:
            raise SegXAIError(f"the bundle's network reads {image.shape[0]} input channels; SegXAI explains "
                              "single-channel (CT) models")
        affine = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
        if str(image.meta.get("space", "RAS")).upper() == "LPS":
            affine = LPS_TO_RAS @ affine
        array = np.ascontiguousarray(image[0].detach().cpu().numpy().astype(np.float32))
        grid = Grid(tuple(array.shape), affine[:, [2, 1, 0, 3]])
        return BundlePreprocessed(array, grid, volume.grid, data, self.preprocessing, self.postprocessing)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
