"""Explain a segmentation end to end: segment → target → each method on sliding windows → maps on the input
grid → quality scores. The one call the CLI and the Slicer module share (no files written here).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import SegXAIError
from .explainers import METHODS, default_layer, make_explainer
from .explainers.base import layer_evaluations
from .explainers.ig import completeness_error, make_baseline
from .explainers.lrp import check_supported, conservation_error
from .explainers.tiling import explain_tiled, resolve_precision
from .inference import CancelToken, ProgressFn, choose_device
from .models.store import LoadedModel
from .pipeline import SegmentationResult, segment
from .quality import DEFAULT_GROUPS, removal_baseline
from .scoring import MapScorer, beaten_by_controls, check_groups
from .targets import RegionSpec, Target, make_target, parse_region
from .volume import Volume

#: the methods whose maps are ReLU'd, so non-negative
CAMS = ("gradcam", "hirescam", "gradcampp")


@dataclass
class MethodResult:
    """One method's map on the input grid (float32, signed where the method is), and how it was made."""

    method: str
    map: Volume
    model_map: np.ndarray  # the same map on the model grid, for quality scores
    params: dict
    seconds: float
    checks: dict = field(default_factory=dict)  # completeness / conservation errors and their totals
    quality: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # e.g. an (almost) empty CAM, with a layer that works

    @property
    def signed(self) -> bool:
        """IG, LRP and occlusion maps keep both signs; the CAMs (and SmoothGrad of a CAM) are non-negative."""
        method = self.params.get("inner", self.method) if self.method == "smoothgrad" else self.method
        return method not in CAMS

    @property
    def metadata(self) -> dict:
        """Parameters and checks, for a front door that stores them beside the map."""
        return {"method": self.method, "params": self.params, "checks": self.checks, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}


@dataclass
class ExplanationResult:
    """Everything an explanation run produced, ready for files, a report or a Slicer scene."""

    segmentation: SegmentationResult
    target: Target
    layer: str
    methods: dict  # name → MethodResult, in the order asked for
    seconds: dict
    peak_memory: dict
    controls: dict = field(default_factory=dict)  # the same scores for a random and an edge-detector map
    localisation_against: str = ""  # 'reference' or 'prediction'

    @property
    def maps(self) -> list:
        """The method results in the order asked for (each has ``method``, ``map``, ``metadata``, ``signed``)."""
        return list(self.methods.values())

    def to_json(self) -> dict:
        """The report's content (no arrays)."""
        out = {
            "model": self.segmentation.card.name,
            "target": self.target.to_json(),
            "layer": self.layer,
            "device": self.segmentation.device,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "peak_memory": self.peak_memory,
            "methods": {},
        }
        for name, m in self.methods.items():
            out["methods"][name] = {"params": m.params, "seconds": round(m.seconds, 3), "checks": m.checks,
                                    "quality": m.quality, "warnings": m.warnings}
        if self.controls:
            out["controls"] = self.controls
            out["localisation_against"] = self.localisation_against
        return out


def parse_methods(text) -> list:
    """'gradcam,ig' (or a list) → validated method names, duplicates dropped, order kept."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name not in METHODS:
            raise SegXAIError(f"unknown explanation method {name!r}; use some of {', '.join(METHODS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise SegXAIError(f"no explanation method given; use some of {', '.join(METHODS)}")
    return out


def cam_warnings(method: str, layer: str, totals: dict, card, network) -> list:
    """Plain-words warnings for a CAM that says (almost) nothing, naming a layer that measured well instead."""
    if "positive_fraction" not in totals:
        return []
    out = []
    if totals.get("channels") and totals.get("negative_weights") == totals["channels"]:
        out.append(f"all {totals['channels']} channel weights at layer {layer!r} are negative, so the map is zero")
    elif totals.get("empty"):
        out.append(f"the map is almost empty: {100 * totals['positive_fraction']:.2f} % of the volume is above zero "
                   f"at layer {layer!r}")
    if out:
        measured = [card.explanation.get("default_layer")] + list(card.explanation.get("alternatives", []))
        others = [l for l in measured if l and l != layer] or [default_layer(card.architecture, network)]
        others = [l for l in others if l != layer]
        hint = f"; try --layer {others[0]} (measured on this model's card)" if others else ""
        out[-1] += hint + "; segxai layers MODEL lists the layers"
    return out


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory (MiB)."""
    out = {}
    try:  # POSIX only: Windows has no `resource` module, and a missing figure must not stop a run
        import resource
    except ImportError:
        resource = None
    if resource is not None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["max_rss_mib"] = round(rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024, 1)
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def explain_volume(
    volume: Volume,
    model: LoadedModel,
    methods: Sequence[str] = (),
    target: Optional[str] = None,
    region: "str | RegionSpec" = "predicted",
    layer: Optional[str] = None,
    steps: int = 32,
    baseline: str = "blur",
    lrp_rule: str = "composite",
    device: "str | torch.device" = "auto",
    quality: bool = False,
    curve_steps: int = 10,
    sanity: bool = False,
    precision: str = "auto",
    segmentation: Optional[SegmentationResult] = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[CancelToken] = None,
    *,
    reference: Optional[Volume] = None,
    scores: Sequence[str] = DEFAULT_GROUPS,
    lrp_epsilon: float = 1e-6,
    lrp_gamma: float = 0.25,
    occlusion_mm: float = 48.0,
    smooth: str = "ig",
    samples: int = 8,
    sigma: float = 0.15,
    randomisation_groups: int = 3,
    seed: int = 0,
) -> ExplanationResult:
    """Segment ``volume`` (unless ``segmentation`` is given) and explain class ``target`` × ``region``.

    ``methods`` empty → the card's measured default method (``explanation.default_method``), else Grad-CAM.
    Every returned map has the input's exact geometry. ``quality`` adds the ``scores`` groups of
    ``quality.evaluate_map`` (localisation against ``reference`` — a label volume of the class — when given,
    else against the prediction; deletion / insertion over the target's voxels with a fat baseline; ROAD …)
    for every map *and* for a random and an edge-detector control map, and a warning where a method does not
    beat both controls; ``sanity`` adds Adebayo et al.'s cascading randomisation in ``randomisation_groups``
    steps (one more explanation per step and method). ``precision`` 'auto' runs the CAMs under bf16 autocast
    where bf16 is fast and everything else in fp32 (see ``explainers.tiling.resolve_precision``).
    """
    net, card = model.network, model.card
    methods = parse_methods(methods or [card.explanation.get("default_method", "gradcam")])
    device = choose_device(device)
    spec = region if isinstance(region, RegionSpec) else parse_region(region)
    options = dict(steps=steps, baseline=baseline, lrp_rule=lrp_rule, lrp_epsilon=lrp_epsilon, lrp_gamma=lrp_gamma,
                   occlusion_mm=occlusion_mm, spacing=card.spacing, smooth=smooth, samples=samples, sigma=sigma)
    if "lrp" in methods or ("smoothgrad" in methods and smooth == "lrp"):
        check_supported(net)  # refuse before the long work starts
    layer = layer or default_layer(card.architecture, net, card)
    explainers = {name: make_explainer(name, layer, **options) for name in methods}  # bad options fail here
    if any(e.uses_layer for e in explainers.values()):
        layer_evaluations(net, layer)  # a wrong --layer fails before the segmentation runs
    if quality:
        check_groups(scores)
    seconds = {}
    t0 = time.perf_counter()
    if segmentation is None:
        segmentation = segment(volume, model, device, progress, cancel)
    seconds["segment"] = time.perf_counter() - t0
    pre = segmentation.preprocessed
    predicted = torch.argmax(segmentation.logits, dim=0).numpy()  # model grid, before post-processing
    target = make_target(card, target, spec, pre, predicted)  # the class name becomes a Target
    del predicted
    base = make_baseline(pre.image, baseline, model.preprocessing.window)
    removal = removal_baseline(pre.image, model.preprocessing.window)
    scorer = None
    if (quality or sanity) and not target.is_empty:
        scorer = MapScorer(model, pre, target, device, reference, scores, curve_steps, seed, progress)
    results = {}
    net.eval()
    for name, explainer in explainers.items():
        used = resolve_precision(precision, device, explainer)
        t = time.perf_counter()
        # IG integrates from the blur (completeness holds there); occlusion fills a patch with fat, which removes
        # the information (quality.REMOVAL_HU), where the blur leaves most of the liver's probability
        method_base = {"ig": base, "occlusion": removal}.get(name, base if name == "smoothgrad" and smooth == "ig" else None)
        model_map, totals = explain_tiled(explainer, net, pre.image, target.class_value, target.region, card.patch,
                                          card.overlap, device, method_base, progress, cancel, name, used,
                                          model.windowing)
        checks = {"totals": totals}
        if name == "ig" and totals:
            checks["completeness_error"] = completeness_error(totals)
        if name == "lrp" and totals:
            checks["conservation_error"] = conservation_error(totals)
        elapsed = time.perf_counter() - t
        found = scorer.scores(model_map, name) if scorer is not None and quality else {}
        if sanity and scorer is not None:
            def explain_fn(clone, explainer=explainer, method_base=method_base, name=name):
                return explain_tiled(explainer, clone, pre.image, target.class_value, target.region, card.patch,
                                     card.overlap, device, method_base, progress, cancel,
                                     f"{name}: randomised model", used, model.windowing)[0]
            found.update(scorer.randomisation(net, explain_fn, model_map, randomisation_groups))
        warnings = cam_warnings(name, layer, totals, card, net)
        results[name] = MethodResult(name, pre.to_source(model_map, "linear"), model_map,
                                     dict(explainer.params(), precision=used), elapsed, checks, found, warnings)
    controls = scorer.controls() if scorer is not None and quality else {}
    for m in results.values():
        m.warnings.extend(beaten_by_controls(m.method, m.quality, controls))
    seconds["total"] = time.perf_counter() - t0
    return ExplanationResult(segmentation, target, layer, results, seconds, peak_memory(device), controls,
                             scorer.against if scorer is not None else "")
