"""Explainers: one class per method, one call for all (``attribute``), and whole-volume tiling."""
from __future__ import annotations

from ..errors import SegXAIError
from .base import Attribution, Explainer, default_layer  # noqa: F401
from .gradcam import GradCAM, GradCAMPlusPlus, HiResCAM
from .ig import IntegratedGradients  # noqa: F401
from .lrp import LRP

#: method names the CLI accepts, in report order.
METHODS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp")


def make_explainer(name: str, layer: str = "", steps: int = 32, baseline: str = "blur", lrp_rule: str = "epsilon",
                   alpha_batch: int | None = None) -> Explainer:
    """The explainer called ``name`` with its parameters (``layer`` for the CAMs, ``steps``/``baseline`` for IG)."""
    name = name.strip().lower()
    if name == "gradcam":
        return GradCAM(layer)
    if name == "hirescam":
        return HiResCAM(layer)
    if name == "gradcampp":
        return GradCAMPlusPlus(layer)
    if name == "ig":
        return IntegratedGradients(steps, alpha_batch, baseline)
    if name == "lrp":
        if lrp_rule == "alphabeta":
            return LRP("alphabeta", alpha=2.0, beta=1.0)
        return LRP(lrp_rule)
    raise SegXAIError(f"unknown explanation method {name!r}; use some of {', '.join(METHODS)}")
