"""MONAI bundles as SegXAI models: recognised by their files, run with exactly their own pre-processing, sliding
window and inverse, and never allowed to run code that SegXAI has not checked.

A bundle folder holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt`` (a state dict; ``models/model.ts`` TorchScript is used when there is no model.pt).
Only ``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing`` (and what they reference) are parsed,
after `monai_bundle_safety` has checked them; the weights are read with `safe_checkpoint.load_checkpoint`.
Supported: one input channel, a ``SlidingWindowInferer`` (Gaussian of any σ, or constant blending; zero padding),
softmax or arg-max outputs, pre-processing that starts from ``LoadImaged`` on 'image'. Refused with a line that
says why: other inferers, sigmoid (multi-label) outputs, several input channels, unchecked code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ...errors import SegXAIError
from ..card import ClassInfo, ModelCard

CONFIGS = ("inference.json", "inference.yaml", "inference.yml")
#: the environment variable that trusts every bundle loaded by name or folder (the CLI has no --trust-model flag yet)
TRUST_ENV = "SEGXAI_TRUST_MODEL"


def find_bundle(path: "str | Path") -> Optional[tuple]:
    """(bundle root, inference config file) when ``path`` is a MONAI bundle folder (or its configs/), else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if path.name == "configs" and (path / "metadata.json").is_file():
        path = path.parent
    configs = path / "configs"
    if not (configs / "metadata.json").is_file():
        return None
    for name in CONFIGS:
        if (configs / name).is_file():
            return path, configs / name
    return None


def read_config(path: Path):
    """A JSON or YAML config file as plain data (YAML with ``safe_load``: no Python tags)."""
    try:
        text = path.read_text()
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise SegXAIError(f"{path} is not a readable config ({' '.join(str(err).split())[:160]})") from None
    except Exception as err:  # yaml.YAMLError and its subclasses
        raise SegXAIError(f"{path} is not valid YAML ({' '.join(str(err).split())[:160]})") from None


def trusted(trust_model: Optional[bool]) -> bool:
    if trust_model is not None:
        return bool(trust_model)
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def parse_components(config: dict, root: Path, trust_model: bool) -> dict:
    """network_def, preprocessing, inferer and postprocessing built by MONAI's ConfigParser from the checked
    (pruned) config, with ``bundle_root`` set to the bundle's folder as ``monai.bundle run`` sets it."""
    from monai.bundle import ConfigParser

    from .monai_bundle_safety import WANTED, pruned_config

    pruned = pruned_config(config, WANTED, trust_model)
    if "bundle_root" in pruned:
        pruned["bundle_root"] = str(root)
    parser = ConfigParser(pruned, globals={"os": "os"})
    built = {}
    for key in WANTED:
        try:
            built[key] = parser.get_parsed_content(key)  # cached: Invertd gets this very preprocessing
        except SegXAIError:
            raise
        except Exception as err:
            cause = err.__cause__ or err
            raise SegXAIError(f"MONAI could not build {key!r} from the bundle's config "
                              f"({type(cause).__name__}: {' '.join(str(cause).split())[:180]})") from None
    return built


def load_weights(network, root: Path):
    """The network with the bundle's weights: models/model.pt as a state dict (read without running code), else
    models/model.ts as TorchScript (which replaces the network built from network_def)."""
    import torch

    from ..safe_checkpoint import load_checkpoint

    pt, ts = root / "models" / "model.pt", root / "models" / "model.ts"
    if pt.is_file():
        state = load_checkpoint(pt)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a checkpoint saved as {"model": state_dict}, as CheckpointLoader also reads it
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SegXAIError(f"{pt} is not a state dict of tensors; export the weights with "
                              "torch.save(network.state_dict(), 'model.pt')")
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:200]
            raise SegXAIError(f"{pt} does not fit the bundle's network_def ({detail})") from None
        return network
    if ts.is_file():
        try:
            return torch.jit.load(str(ts), map_location="cpu")
        except Exception as err:
            raise SegXAIError(f"{ts} is not a loadable TorchScript file ({' '.join(str(err).split())[:120]})") from None
    raise SegXAIError(f"the bundle {root} has no models/model.pt (or models/model.ts); download the bundle's weights")


def windowing_of(inferer):
    """SegXAI windows equal to the bundle's inferer: `MonaiWindowing` for MONAI's default Gaussian, else
    `BundleWindowing` (constant, or another σ); anything SegXAI cannot reproduce window by window is refused."""
    import numpy as np
    from monai.inferers import SlidingWindowInferer

    from ...bundle_windowing import MODES, BundleWindowing
    from ...windowing import MonaiWindowing

    if not isinstance(inferer, SlidingWindowInferer):
        raise SegXAIError(f"the bundle's inferer is {type(inferer).__name__}; SegXAI runs bundles whose inferer is a "
                          "SlidingWindowInferer (it explains the network window by window)")
    roi = [int(r) for r in np.atleast_1d(inferer.roi_size)]
    if len(roi) == 1:
        roi = roi * 3
    if len(roi) != 3 or min(roi) <= 0:
        raise SegXAIError(f"the bundle's roi_size {inferer.roi_size} is not three positive sizes; SegXAI needs a "
                          "fixed 3D window")
    if np.ndim(inferer.overlap) != 0:
        raise SegXAIError(f"the bundle's inferer has a per-axis overlap {inferer.overlap}; SegXAI supports one overlap")
    mode = str(getattr(inferer.mode, "value", inferer.mode))
    padding = str(getattr(inferer.padding_mode, "value", inferer.padding_mode))
    if mode not in MODES:
        raise SegXAIError(f"the bundle's inferer blends windows with mode {mode!r}; supported: {', '.join(MODES)}")
    if padding != "constant" or float(inferer.cval) != 0.0:
        raise SegXAIError(f"the bundle's inferer pads with {padding!r} (cval {inferer.cval}); SegXAI supports "
                          "padding_mode 'constant' with cval 0")
    if getattr(inferer, "with_coord", False) or getattr(inferer, "roi_weight_map", None) is not None:
        raise SegXAIError("the bundle's inferer passes window coordinates or its own weight map; not supported")
    sigma = inferer.sigma_scale
    if mode == "gaussian" and np.allclose(sigma, 0.125):
        return MonaiWindowing(roi, float(inferer.overlap))
    return BundleWindowing(roi, float(inferer.overlap), mode, sigma)


def class_table(metadata: dict, channels: int) -> list:
    """ClassInfo per output channel: SegXAI's own classes when the bundle was exported by SegXAI, else the
    metadata's ``network_data_format.outputs.pred.channel_def``, else 'class N'."""
    saved = (metadata.get("segxai") or {}).get("classes")
    if saved and len(saved) == channels:
        return [ClassInfo(int(c["value"]), c["name"], list(c.get("color", [128, 174, 128])), c.get("terminology", {}))
                for c in saved]
    outputs = ((metadata.get("network_data_format") or {}).get("outputs") or {})
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else {})
    names = {int(k): str(v) for k, v in (pred.get("channel_def") or {}).items() if str(k).isdigit()}
    return [ClassInfo.known(c, names.get(c, "background" if c == 0 else f"class {c}")) for c in range(channels)]


def output_channels(network, patch, metadata: dict) -> int:
    """The network's output channels: the metadata's ``outputs.pred.num_channels`` when it says, else one window
    of zeros through the network (which must return one 5D tensor)."""
    import torch

    pred = (((metadata.get("network_data_format") or {}).get("outputs") or {}).get("pred") or {})
    if isinstance(pred.get("num_channels"), int) and pred["num_channels"] > 0:
        return int(pred["num_channels"])
    with torch.no_grad():
        out = network(torch.zeros(1, 1, *patch))
    out = out[0] if isinstance(out, (list, tuple)) else out
    if not isinstance(out, torch.Tensor) or out.ndim != 5:
        raise SegXAIError("the bundle's network does not return one (batch, channel, x, y, z) tensor for a window; "
                          "SegXAI explains 3D segmentation networks")
    return int(out.shape[1])


def _describe_transforms(compose) -> list:
    return [type(t).__name__ for t in getattr(compose, "transforms", [])]


def _check_postprocessing(postprocessing) -> None:
    for t in getattr(postprocessing, "transforms", []):
        sigmoid = getattr(t, "sigmoid", False) if type(t).__name__ in ("Activations", "Activationsd") else False
        if any(sigmoid) if isinstance(sigmoid, (list, tuple)) else sigmoid:
            raise SegXAIError("the bundle's postprocessing applies a sigmoid (one independent mask per channel); "
                              "SegXAI explains models with one label per voxel (softmax / arg-max)")


def _grid_facts(preprocessing) -> tuple:
    """(spacing along the model grid's i, j, k; orientation code of i, j, k) from Spacingd/Orientationd."""
    from monai.transforms import Orientationd, Spacingd

    spacing, orientation = [1.0, 1.0, 1.0], ""
    for t in getattr(preprocessing, "transforms", []):
        if isinstance(t, Spacingd):
            pixdim = [float(p) for p in t.spacing_transform.pixdim]
            spacing = (pixdim * 3 if len(pixdim) == 1 else pixdim)[:3][::-1]
        if isinstance(t, Orientationd) and t.ornt_transform.axcodes:
            orientation = str(t.ornt_transform.axcodes)[::-1]
    return spacing, orientation


def load_bundle(path: "str | Path", device="cpu", trust_model: Optional[bool] = None):
    """The MONAI bundle at ``path`` as a `LoadedModel` with the bundle's own pre-processing, windows and inverse.

    ``trust_model`` (default: the ``SEGXAI_TRUST_MODEL`` environment variable) skips the config check."""
    import torch

    from ..store import LoadedModel
    from .monai_bundle_preprocessing import BundlePreprocessing, window_of

    found = find_bundle(path)
    if found is None:
        raise SegXAIError(f"{path} is not a MONAI bundle folder (configs/inference.json or .yaml, "
                          "configs/metadata.json, models/model.pt)")
    root, config_file = found
    metadata = read_config(root / "configs" / "metadata.json")
    config = read_config(config_file)
    trust = trusted(trust_model)
    built = parse_components(config, root, trust)
    network = built["network_def"]
    if not isinstance(network, torch.nn.Module):
        raise SegXAIError(f"the bundle's network_def builds a {type(network).__name__}, not a torch network")
    network = load_weights(network, root).eval()
    windowing = windowing_of(built["inferer"])
    _check_postprocessing(built["postprocessing"])
    metadata = metadata if isinstance(metadata, dict) else {}
    classes = class_table(metadata, output_channels(network, windowing.patch, metadata))
    window = window_of(built["preprocessing"])
    spacing, orientation = _grid_facts(built["preprocessing"])
    saved = (metadata.get("segxai") or {}) if isinstance(metadata, dict) else {}
    extra = {"monai_bundle": {
        "name": metadata.get("name", root.name), "version": metadata.get("version", ""),
        "network": type(network).__name__, "config": str(config_file.relative_to(root)),
        "preprocessing": _describe_transforms(built["preprocessing"]),
        "postprocessing": _describe_transforms(built["postprocessing"]),
        "windowing": windowing.describe(), "trusted": trust}}
    if saved.get("explanation"):
        extra["explanation"] = saved["explanation"]
    elif type(network).__name__ == "UNet":
        from ..unet import DEFAULT_LAYER

        modules = dict(network.named_modules())
        extra["explanation"] = {"default_layer": DEFAULT_LAYER if DEFAULT_LAYER in modules else "model.1"}
    card = ModelCard(
        name=str(metadata.get("name") or root.name), architecture="monai-bundle", classes=classes, spacing=spacing,
        window=window.range, patch=list(windowing.patch), orientation=orientation or "LPS",
        overlap=windowing.overlap, weights="", description=str(metadata.get("description", f"MONAI bundle {root}")),
        intended_use=str(metadata.get("intended_use", "As its authors state; SegXAI only reads and explains it.")),
        limitations=list(saved.get("limitations", [])), extra=extra)
    preprocessing = BundlePreprocessing(built["preprocessing"], built["postprocessing"], window)
    return LoadedModel(network.to(device), card, root, format="monai-bundle", custom_preprocessing=preprocessing,
                       custom_windowing=windowing)


def describe(model) -> str:
    """One line of what was recognised, for the CLI and the Slicer log."""
    info = model.card.extra.get("monai_bundle", {})
    classes = ", ".join(c.name for c in model.card.foreground)
    win = info.get("windowing", {})
    blend = win.get("mode", "gaussian")
    return (f"MONAI bundle {info.get('name')} {info.get('version', '')} from {model.folder} — {info.get('network')}, "
            f"preprocessing {' → '.join(info.get('preprocessing', []))}, sliding window {win.get('patch')} overlap "
            f"{win.get('overlap')} ({blend}){', trusted' if info.get('trusted') else ''}; "
            f"{len(model.card.foreground)} classes: {classes}")
