"""Control maps every score is also computed for: a map that knows nothing (random) and a map that knows only the
image, not the model (edge detector). A method whose scores do not beat both is not explaining the model."""
from __future__ import annotations

import numpy as np


def random_map(shape, seed: int = 0) -> np.ndarray:
    """I.i.d. uniform [0, 1) values: no information about image or model."""
    return np.random.default_rng(seed).random(tuple(shape)).astype(np.float32)


def edge_map(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the image in 3D (Adebayo et al.'s edge-detector control)."""
    from scipy.ndimage import sobel

    x = np.asarray(image, dtype=np.float32)
    return np.sqrt(sum(sobel(x, axis=a, mode="nearest") ** 2 for a in range(x.ndim))).astype(np.float32)


def control_maps(image: np.ndarray, region=None, seed: int = 0) -> dict:
    """{'random': random_map, 'edge': edge_map} on the image's grid. ``region`` is accepted so a caller can pass
    the target, but the controls deliberately ignore it (a control that knew the target would not be one)."""
    return {"random": random_map(np.shape(image), seed), "edge": edge_map(image)}
