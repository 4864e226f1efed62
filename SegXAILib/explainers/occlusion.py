"""Occlusion and supervoxel ablation of the segmentation score F (Zeiler & Fergus 2014), for any network.

Only forward passes (no hooks, no gradients), so TorchScript and other opaque networks work. Each feature — a
cube patch on the model grid, or a supervoxel — is replaced by the fill (the baseline image, or a constant), the
explained score F = Σ_{u∈M} y_c(u) of the Gaussian-blended sliding-window logits (see ``tiling.py``) is re-scored,
and every voxel of the feature gets F(x) − F(x with the feature filled), averaged over the features that cover it
(captum's ``Occlusion`` convention; with supervoxels, captum's ``FeatureAblation``). Cube patches are placed as
captum places them: lo, lo + stride, … until the box is covered, the last one cut at the box's end.
Cost: filling a feature changes only the windows that overlap it, and only windows holding target voxels count
in F, so only those are re-run; each window's unoccluded target contribution is cached, and several occluded
windows go through the network in one forward. ``within_mm`` limits the occluded area to the target's bounding
box plus a margin (voxels outside it get 0): a patch costs one window forward per target window it overlaps,
wherever it lies.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import SegXAIError
from .base import Attribution, Explainer
from .tiling import Tiles

FILLS = ("baseline", "value")


def cube_spans(lo: int, hi: int, size: int, stride: int) -> list:
    """captum's Occlusion placement on [lo, hi): starts lo + i·stride, i = 0 … ⌈(L − size)/stride⌉, cut at hi."""
    count = int(math.ceil(max(hi - lo - size, 0) / stride)) + 1
    return [(lo + i * stride, min(lo + i * stride + size, hi)) for i in range(count)]


def _per_axis(value, name: str) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3
    if len(values) != 3:
        raise SegXAIError(f"occlusion {name} needs 1 or 3 values, got {len(values)}")
    return values


class Occlusion(Explainer):
    """Occlusion of cube patches (or ablation of supervoxels) of the blended target score F.

    ``patch_voxels`` (or ``patch_mm`` with ``spacing``) is the cube's edge on the model grid, ``stride`` the step
    between patches (default: the patch, so patches do not overlap; at most the patch). ``fill`` 'baseline' puts
    the explanation's baseline image in the patch, 'value' the constant ``value``. ``supervoxels``: False for cubes,
    True for SLIC supervoxels of about a patch's volume on the image inside the occluded area, or an integer label
    array on the model grid (0 or below = never occluded; ``within_mm`` then does not apply). ``within_mm`` (or
    ``within_voxels``): the occluded area is the target's bounding box grown by this margin; None occludes the whole
    volume. ``spacing`` is the model grid's spacing in mm along i, j, k as the card gives it (needed for the mm
    options). ``batch``: occluded windows per forward (None: 8 on a GPU, 1 on a CPU).
    """

    name = "occlusion"
    # never bf16: a map of small differences of a large F. Measured (bench/occlusion_cost.py --compare-bf16 8, bundled
    # U-Net, sample CT, 6-voxel patches): under bf16 autocast F moved by 0.3 % (402 of 125311) and the patches'
    # differences were off by 3× the largest one; it saved 13 % of the time on a CPU with AVX512-BF16
    bf16 = "never"

    def __init__(self, patch_voxels=6, stride=None, fill: str = "baseline", value: float = 0.0, supervoxels=False,
                 within_mm: Optional[float] = 30.0, within_voxels=None, patch_mm=None,
                 spacing: Optional[Sequence[float]] = None, batch: Optional[int] = None, compactness: float = 0.1) -> None:
        if fill not in FILLS:
            raise SegXAIError(f"unknown occlusion fill {fill!r}; use one of {', '.join(FILLS)}")
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)[::-1]  # (i, j, k) → array axes
        self.patch_mm = patch_mm
        if patch_mm is not None:
            patch_voxels = tuple(max(int(round(float(m) / s)), 1) for m, s in zip(_per_axis(patch_mm, "patch_mm")[::-1],
                                                                                     self._spacing("patch_mm")))
        self.patch = tuple(int(p) for p in _per_axis(patch_voxels, "patch_voxels"))
        self.stride = self.patch if stride is None else tuple(int(s) for s in _per_axis(stride, "stride"))
        if min(self.patch) < 1 or min(self.stride) < 1:
            raise SegXAIError(f"occlusion patch and stride must be at least 1 voxel, got {self.patch} and {self.stride}")
        if any(s > p for s, p in zip(self.stride, self.patch)):
            raise SegXAIError(f"occlusion stride {self.stride} is larger than the patch {self.patch}: voxels would be "
                              "skipped; use a stride of at most the patch")
        self.fill, self.value = fill, float(value)
        self.labels = None if isinstance(supervoxels, (bool, np.bool_)) else np.asarray(supervoxels)
        self.supervoxels = self.labels is not None or bool(supervoxels)
        if self.labels is not None and not np.issubdtype(self.labels.dtype, np.integer):
            raise SegXAIError("occlusion supervoxels must be an integer label array on the model grid (0 = never occluded)")
        self.within_mm, self.within_voxels = within_mm, within_voxels
        if within_mm is not None and within_voxels is None and self.labels is None:
            self._spacing("within_mm")
        self.batch = None if batch is None else max(int(batch), 1)
        self.compactness = float(compactness)

    def _spacing(self, option: str) -> tuple:
        if self.spacing is None:
            raise SegXAIError(f"occlusion {option} needs the model grid's spacing; pass spacing=card.spacing, or give "
                              "the size in voxels (patch_voxels / within_voxels, within_mm=None for the whole volume)")
        return self.spacing

    def params(self) -> dict:
        out = {"patch_voxels": list(self.patch), "stride": list(self.stride), "fill": self.fill,
               "features": "supervoxels" if self.supervoxels else "cubes"}
        if self.patch_mm is not None:
            out["patch_mm"] = self.patch_mm
        if self.fill == "value":
            out["value"] = self.value
        if self.labels is None:
            out["within"] = (f"{self.within_voxels} voxels" if self.within_voxels is not None else
                             f"{self.within_mm} mm" if self.within_mm is not None else "whole volume")
        if self.supervoxels and self.labels is None:
            out["slic_compactness"] = self.compactness
        return out

    # -- what is occluded --------------------------------------------------------------------------------------
    def area(self, tiles: Tiles) -> tuple:
        """(lo, hi) per axis on the padded grid: the target's bounding box grown by the margin, inside the volume."""
        inner = [(lo, s - hi) for (lo, hi), s in zip(tiles.pads, tiles.shape)]
        if self.within_voxels is None and self.within_mm is None:
            return tuple(inner)
        if self.within_voxels is not None:
            margin = tuple(int(m) for m in _per_axis(self.within_voxels, "within_voxels"))
        else:
            margin = tuple(int(math.ceil(float(self.within_mm) / s)) for s in self._spacing("within_mm"))
        where = np.nonzero(tiles.region)
        return tuple((max(int(w.min()) - m, a), min(int(w.max()) + 1 + m, b)) for w, m, (a, b) in zip(where, margin, inner))

    def features(self, tiles: Tiles) -> list:
        """Occluded features as (slices on the padded grid, boolean mask inside them or None for a full cube)."""
        if not self.supervoxels:
            box = self.area(tiles)
            spans = [cube_spans(lo, hi, p, s) for (lo, hi), p, s in zip(box, self.patch, self.stride)]
            return [(tuple(slice(a, b) for a, b in span), None)
                    for span in ((x, y, z) for x in spans[0] for y in spans[1] for z in spans[2])]
        labels = self.padded_labels(tiles)
        from scipy.ndimage import find_objects

        out = []
        for number, box in enumerate(find_objects(labels), start=1):
            if box is not None:
                out.append((box, labels[box] == number))
        return out

    def padded_labels(self, tiles: Tiles) -> np.ndarray:
        """Supervoxel labels (> 0) on the padded grid: the given ones, or SLIC's inside the occluded area."""
        if self.labels is not None:
            volume_shape = tuple(s - lo - hi for s, (lo, hi) in zip(tiles.shape, tiles.pads))
            if self.labels.shape != volume_shape:
                raise SegXAIError(f"occlusion supervoxel labels have shape {self.labels.shape}, the model grid is "
                                  f"{volume_shape}; give one label per model-grid voxel")
            return np.pad(np.clip(self.labels, 0, None).astype(np.int64), tiles.pads)
        from skimage.segmentation import slic

        box = tuple(slice(lo, hi) for lo, hi in self.area(tiles))
        crop = tiles.image[box]
        segments = max(int(round(crop.size / float(np.prod(self.patch)))), 1)
        labels = np.zeros(tiles.shape, dtype=np.int64)
        labels[box] = slic(crop.astype(np.float64), n_segments=segments, compactness=self.compactness,
                           channel_axis=None, start_label=1, spacing=self.spacing)
        return labels

    def fill_image(self, tiles: Tiles) -> np.ndarray:
        if self.fill == "value":
            return np.full(tiles.shape, self.value, dtype=np.float32)
        if tiles.baseline is None:
            raise SegXAIError("occlusion with fill='baseline' needs a baseline image; pass one (e.g. the blur "
                              "baseline) or use fill='value'")
        return tiles.baseline

    # -- the whole tiled volume --------------------------------------------------------------------------------
    def plan(self, tiles: Tiles):
        """(features, target windows, jobs): a job is one (window, feature) pair whose occlusion changes F."""
        features = self.features(tiles)
        windows = [n for n in range(len(tiles)) if tiles.has_target(n)]
        lo = np.array([[s.start for s in box] for box, _ in features]).reshape(-1, 3)
        hi = np.array([[s.stop for s in box] for box, _ in features]).reshape(-1, 3)
        fill = self.fill_image(tiles)
        # a feature whose fill equals the image there (air filled with 0, say) leaves F exactly as it is
        changes = np.array([not np.array_equal(tiles.image[box] if mask is None else tiles.image[box][mask],
                                               fill[box] if mask is None else fill[box][mask]) for box, mask in features])
        jobs = []
        for n in windows:
            w_lo = np.array(tiles.starts[n])
            overlapping = np.all((lo < w_lo + tiles.patch) & (hi > w_lo), axis=1) & changes.reshape(-1)
            for f in np.nonzero(overlapping)[0]:
                if features[f][1] is None or self._local(features[f], tiles.starts[n], tiles.patch)[1].any():
                    jobs.append((n, int(f)))
        return features, windows, jobs

    def explain_tiles(self, tiles: Tiles):
        """Map on the padded grid (float32) and totals: F(x), forward passes and window evaluations made."""
        if not tiles.region.any():
            return np.zeros(tiles.shape, dtype=np.float32), {"score": 0.0, "forward_passes": 0, "window_evaluations": 0}
        fill = torch.from_numpy(np.ascontiguousarray(self.fill_image(tiles), dtype=np.float32)).to(tiles.device)
        features, windows, jobs = self.plan(tiles)
        per_forward = self.batch or (8 if tiles.device.type == "cuda" else 1)
        image = torch.from_numpy(np.ascontiguousarray(tiles.image, dtype=np.float32)).to(tiles.device)
        total = len(windows) + len(jobs)
        counts = {"forward_passes": 0, "window_evaluations": 0}
        # each target window's weights and unoccluded class logits at its target voxels
        cached = {}
        for start in range(0, len(windows), per_forward):
            chunk = windows[start:start + per_forward]
            logits = self._forward(tiles, counts, torch.cat([image[(None, None) + tiles.window(n)] for n in chunk]))
            for n, out in zip(chunk, logits):
                share = tiles.share(n).flatten()
                where = torch.nonzero(share).flatten()
                cached[n] = (where, share[where], out.flatten()[where])
            tiles.step(start + len(chunk), total)
        score = float(sum(float((w.double() * f.double()).sum()) for where, w, f in cached.values()))
        delta = np.zeros(len(features), dtype=np.float64)
        for start in range(0, len(jobs), per_forward):
            chunk = jobs[start:start + per_forward]
            batch = []
            for n, f in chunk:
                x = image[(None, None) + tiles.window(n)].clone()
                local, mask = self._local(features[f], tiles.starts[n], tiles.patch)
                part = fill[tuple(slice(a + s.start, a + s.stop) for a, s in zip(tiles.starts[n], local))]
                region = x[(0, 0) + local]
                region[...] = part if mask is None else torch.where(torch.from_numpy(mask).to(tiles.device), part, region)
                batch.append(x)
            logits = self._forward(tiles, counts, torch.cat(batch))
            for (n, f), out in zip(chunk, logits):
                where, w, base = cached[n]
                delta[f] += float((w * (base - out.flatten()[where])).sum())
            tiles.step(len(windows) + start + len(chunk), total)
        out = np.zeros(tiles.shape, dtype=np.float64)
        count = np.zeros(tiles.shape, dtype=np.float64)
        for (box, mask), d in zip(features, delta):
            cover = 1.0 if mask is None else mask
            out[box] += d * cover
            count[box] += cover
        out = np.divide(out, count, out=np.zeros_like(out), where=count > 0).astype(np.float32)
        totals = {"score": score, **counts, "features": len(features), "full_rescoring_window_evaluations": (len(features) + 1) * len(tiles)}
        return out, totals

    @staticmethod
    def _local(feature, start, patch):
        """A feature's part inside a window: slices in window coordinates, and its mask there (None: all of it)."""
        box, mask = feature
        local = tuple(slice(max(s.start - a, 0), min(s.stop - a, p)) for s, a, p in zip(box, start, patch))
        if mask is None:
            return local, None
        inside = tuple(slice(l.start + a - s.start, l.stop + a - s.start) for l, s, a in zip(local, box, start))
        return local, mask[inside]

    @staticmethod
    def _forward(tiles: Tiles, counts: dict, x: torch.Tensor) -> torch.Tensor:
        """The class logits (B, k, j, i) of a batch of windows, fp32."""
        with torch.no_grad(), tiles.autocast():
            logits = tiles.network(x)
        counts["forward_passes"] += 1
        counts["window_evaluations"] += int(x.shape[0])
        return logits[:, tiles.class_index].float()

    # -- per batch item, each a volume of its own (the captum-style call) ----------------------------------------
    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        maps, totals = [], {}
        for b in range(inputs.shape[0]):
            problem = _OneVolume(network, inputs[b, 0], class_index, weights[b],
                                 None if baseline is None else baseline[b, 0])
            m, t = self.explain_tiles(problem)
            maps.append(torch.from_numpy(m).to(inputs.device))
            for key, value in t.items():
                totals[key] = totals.get(key, 0) + value
        return Attribution(torch.stack(maps), totals)


class _OneVolume(Tiles):
    """A single input as one window covering it, with arbitrary target weights (the captum-style call)."""

    def __init__(self, network, image: torch.Tensor, class_index: int, weights: torch.Tensor,
                 baseline: Optional[torch.Tensor]) -> None:
        array = image.detach().float().cpu().numpy()
        self.weights = weights.detach().float()
        super().__init__(network, array, class_index, self.weights.cpu().numpy() != 0, array.shape, 0.5, image.device,
                         None if baseline is None else baseline.detach().float().cpu().numpy())

    def share(self, n: int) -> torch.Tensor:
        return self.weights[None].to(self.device)
