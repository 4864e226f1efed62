"""Explainers: one class per method, one call for all (``attribute`` per window, ``explain_tiles`` for the volume)."""
from __future__ import annotations

from ..errors import SegXAIError
from .base import Attribution, Explainer, default_layer  # noqa: F401
from .gradcam import GradCAM, GradCAMPlusPlus, HiResCAM
from .ig import IntegratedGradients  # noqa: F401
from .lrp import LRP
from .occlusion import Occlusion
from .smoothgrad import SmoothGrad

#: method names the CLI accepts, in report order; ``smoothgrad`` smooths the method named by ``smooth``.
METHODS = ("gradcam", "hirescam", "gradcampp", "ig", "lrp", "occlusion", "smoothgrad")


def make_explainer(name: str, layer: str = "", steps: int = 32, baseline: str = "blur", lrp_rule: str = "composite",
                   alpha_batch: int | None = None, lrp_epsilon: float = 1e-6, lrp_gamma: float = 0.25,
                   occlusion_mm: float = 48.0, occlusion_within_mm: float | None = 0.0, spacing=None,
                   smooth: str = "ig", samples: int = 8, sigma: float = 0.15) -> Explainer:
    """The explainer called ``name`` with its parameters (``layer`` for the CAMs, ``steps``/``baseline`` for IG,
    the LRP rule with ε and γ, the occlusion cube and area in mm, SmoothGrad's inner method, samples and σ)."""
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
        return LRP(lrp_rule, epsilon=lrp_epsilon, gamma=lrp_gamma)
    if name == "occlusion":
        if spacing is None:  # no grid to convert mm with: sizes in model voxels
            return Occlusion(patch_voxels=6, within_mm=None, within_voxels=10)
        return Occlusion(patch_mm=occlusion_mm, within_mm=occlusion_within_mm, spacing=spacing)
    if name == "smoothgrad":
        if smooth.strip().lower() in ("smoothgrad", "occlusion"):
            raise SegXAIError(f"SmoothGrad smooths a gradient method, not {smooth!r}; use --smooth gradcam, hirescam, "
                              "gradcampp, ig or lrp")
        inner = make_explainer(smooth, layer, steps, baseline, lrp_rule, alpha_batch, lrp_epsilon, lrp_gamma)
        return SmoothGrad(inner, samples=samples, sigma=sigma)
    raise SegXAIError(f"unknown explanation method {name!r}; use some of {', '.join(METHODS)}")
