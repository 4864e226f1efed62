"""Model-parameter randomisation test as Adebayo et al. 2018 do it: cascading, from the output side to the input.

Layers are re-initialised cumulatively, top first; after each step the map is recomputed and compared with the
trained model's map by Spearman rank correlation and SSIM, on the *union of the two maps' supports* (voxels
non-zero in either): over the whole grid the voxels that are zero in both tie, and two independent maps that
share a small support correlate near 1. For signed maps the same figures are also given on absolute values, as
Adebayo et al. report both. A map that still resembles the original after the whole model is randomised does
not depend on what the model learned.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .errors import SegXAIError


def union_support(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Voxels non-zero in either map."""
    return (np.asarray(a) != 0) | (np.asarray(b) != 0)


def spearman(a: np.ndarray, b: np.ndarray, within: Optional[np.ndarray] = None) -> float:
    """Spearman rank correlation of two maps on ``within`` (default: their union support); nan when either is
    constant there."""
    from scipy.stats import rankdata

    if np.shape(a) != np.shape(b):
        raise SegXAIError(f"maps of shapes {np.shape(a)} and {np.shape(b)} cannot be compared")
    within = union_support(a, b) if within is None else np.asarray(within, dtype=bool)
    x, y = np.asarray(a, np.float64)[within], np.asarray(b, np.float64)[within]
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float, win_size: int = 7,
             within: Optional[np.ndarray] = None) -> np.ndarray:
    """The local SSIM of Wang et al. 2004 at every voxel with skimage's defaults (uniform 7-wide window, K1 0.01,
    K2 0.03, sample covariance), in any number of dimensions. With ``within``, each window's means and
    (co)variances are taken over its ``within`` voxels only, so voxels zero in both maps do not count as shared
    structure (nan where a window holds fewer than two of them)."""
    from scipy.ndimage import uniform_filter

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = np.ones(x.shape) if within is None else np.asarray(within, np.float64)
    size = win_size ** x.ndim
    share = uniform_filter(m, win_size)  # fraction of each window inside `within`
    count = np.rint(share * size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda v: uniform_filter(v * m, win_size) / share
        cov_norm = count / (count - 1)
        ux, uy = mean(x), mean(y)
        vx = cov_norm * (mean(x * x) - ux * ux)
        vy = cov_norm * (mean(y * y) - uy * uy)
        vxy = cov_norm * (mean(x * y) - ux * uy)
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        out = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out[count < 2] = np.nan
    return out


def ssim(a: np.ndarray, b: np.ndarray, within: Optional[np.ndarray] = None) -> float:
    """Mean local SSIM over ``within`` (default: the union support) of the two maps, window statistics taken on
    ``within`` too, each map scaled by its own maximum |value| (a comparison of shape, not scale; data range 2
    for signed maps, 1 otherwise)."""
    if np.shape(a) != np.shape(b):
        raise SegXAIError(f"maps of shapes {np.shape(a)} and {np.shape(b)} cannot be compared")
    within = union_support(a, b) if within is None else np.asarray(within, dtype=bool)
    if not within.any():
        return float("nan")
    x, y = _unit_scaled(a), _unit_scaled(b)
    signed = bool((x < 0).any() or (y < 0).any())
    local = ssim_map(x, y, 2.0 if signed else 1.0, within=within)[within]
    local = local[np.isfinite(local)]
    return float(local.mean()) if local.size else float("nan")


def _unit_scaled(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    peak = float(np.abs(a).max())
    return a / peak if peak > 0 else a


def compare_maps(original: np.ndarray, other: np.ndarray) -> dict:
    """Spearman and SSIM on the union support; for signed maps also on absolute values."""
    out = {"spearman": spearman(original, other), "ssim": ssim(original, other)}
    if (np.asarray(original) < 0).any() or (np.asarray(other) < 0).any():
        a, b = np.abs(original), np.abs(other)
        out["spearman_abs"], out["ssim_abs"] = spearman(a, b), ssim(a, b)
    return out


def parameter_layers(network: torch.nn.Module, example_input: Optional[torch.Tensor] = None) -> list:
    """Names of the modules that own parameters directly, from the output side to the input.

    With ``example_input`` the order is the order in which their parameters are first used in one forward pass,
    reversed (read from every torch call, so a position embedding added mid-network sits where it is used);
    without it, the order in which they are registered, reversed (the same for sequential models).
    """
    owners = [(name, m) for name, m in network.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise SegXAIError("the network has no parameters to randomise")
    if example_input is None:
        return [name for name, _ in reversed(owners)]
    owner_of = {id(p): name for name, m in owners for p in m.parameters(recurse=False)}
    recorder = _FirstUse(owner_of)
    with torch.no_grad(), recorder:
        network(example_input)
    never_used = [name for name, _ in owners if name not in recorder.order]
    return list(reversed(recorder.order)) + never_used


class _FirstUse(torch.overrides.TorchFunctionMode):
    """Records, in order, the owner of each parameter the first time a torch call receives it."""

    def __init__(self, owner_of: dict) -> None:
        super().__init__()
        self.owner_of, self.order = owner_of, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                name = self.owner_of.get(id(t)) if isinstance(t, torch.Tensor) else None
                if name is not None and name not in self.order:
                    self.order.append(name)
        return func(*args, **kwargs)


def _draw_seed(seed: int, step: int, index: int) -> int:
    # far from the small seeds models are usually built with, which would redraw the trained weights themselves
    return (int(seed) + 1) * 1_000_003 + step * 1009 + index


def reinitialise(module: torch.nn.Module, generator_seed: int) -> None:
    """Draw the module's own parameters afresh: its ``reset_parameters`` where it has one, else N(0, 0.02²)
    (the usual init for embeddings and tokens); drawn again if a draw reproduced the weights."""
    before = [p.detach().clone() for p in module.parameters(recurse=False)]
    for attempt in range(3):
        torch.manual_seed(generator_seed + 7919 * attempt)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                with torch.no_grad():
                    torch.nn.init.trunc_normal_(p, std=0.02)
        after = list(module.parameters(recurse=False))
        if not any(torch.equal(p, q) and p.numel() > 1 for p, q in zip(before, after)):
            return


def cascading_randomisation(network: torch.nn.Module, explain_fn: Callable[[torch.nn.Module], np.ndarray],
                            original_map: np.ndarray, *, seed: int = 0, layers: Optional[Sequence[str]] = None,
                            groups: Optional[int] = None, example_input: Optional[torch.Tensor] = None,
                            progress: Optional[Callable[[float], None]] = None) -> dict:
    """Adebayo et al.'s cascading randomisation: re-initialise layers cumulatively from the top, recompute the map
    with ``explain_fn(net) -> map`` after each step, and compare it with ``original_map`` (``compare_maps``).

    ``layers`` (output side first) defaults to ``parameter_layers``; ``groups`` merges them into that many
    contiguous steps (one explanation per step; the last step has every layer randomised). The network passed in
    is never changed (a deep copy is randomised). Returns the steps and the figures at the last step.
    """
    order = list(layers) if layers is not None else parameter_layers(network, example_input)
    modules = dict(network.named_modules())
    unknown = [n for n in order if n not in modules]
    if unknown:
        raise SegXAIError(f"no layer named {unknown[0]!r} in the network; see `segxai layers MODEL`")
    if groups is not None:
        if int(groups) < 1:
            raise SegXAIError(f"randomisation groups {groups} must be 1 or more")
        chunks = [list(c) for c in np.array_split(np.array(order, dtype=object), min(int(groups), len(order)))]
    else:
        chunks = [[n] for n in order]
    clone = copy.deepcopy(network).eval()
    clone_modules = dict(clone.named_modules())
    rng_state = torch.random.get_rng_state()
    steps = []
    try:
        for i, chunk in enumerate(chunks):
            if progress is not None:
                progress(i / len(chunks))
            for j, name in enumerate(chunk):
                reinitialise(clone_modules[name], _draw_seed(seed, len(steps), j))
            new_map = np.asarray(explain_fn(clone))
            if new_map.shape != np.shape(original_map):
                raise SegXAIError(f"explain_fn returned a map of shape {new_map.shape}, not {np.shape(original_map)}")
            steps.append({"layers": list(chunk), **compare_maps(original_map, new_map)})
    finally:
        torch.random.set_rng_state(rng_state)
    last = steps[-1]
    return {"steps": steps, **{f"randomisation_{k}": v for k, v in last.items() if k != "layers"}}


def randomised_copy(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A deep copy of the network with every parameter-owning module re-initialised (the cascade's last step)."""
    clone = copy.deepcopy(network)
    rng_state = torch.random.get_rng_state()
    try:
        for i, name in enumerate(parameter_layers(clone)):
            reinitialise(dict(clone.named_modules())[name], _draw_seed(seed, 0, i))
    finally:
        torch.random.set_rng_state(rng_state)
    return clone.eval()
