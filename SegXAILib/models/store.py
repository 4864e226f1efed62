"""Finding, loading and saving models: a card plus safetensors weights, or a card plus TorchScript.

Nothing here unpickles: safetensors holds only tensors, and TorchScript is loaded with ``torch.jit.load``.
Bundled models live in ``Resources/Models/<name>/``; ``Resources/Models/models.json`` names the default.
torch is imported only where a network is built or loaded, so listing models (the Slicer panel opening before
PyTorch is installed) works without it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SegXAIError
from .card import ModelCard

if TYPE_CHECKING:  # annotations only; torch is imported lazily below
    import torch
    from torch import nn

    from ..preprocessing import Preprocessing

ARCHITECTURES = ("residual_unet", "transunet3d", "torchscript")


def resources_dir() -> Path:
    """``Resources/`` of the checkout or Slicer extension (or ``$SEGXAI_RESOURCES``)."""
    env = os.environ.get("SEGXAI_RESOURCES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "Resources"


def models_dir() -> Path:
    return resources_dir() / "Models"


def bundled_models() -> list:
    """Names of the models shipped in ``Resources/Models``."""
    root = models_dir()
    return sorted(p.name for p in root.iterdir() if (p / "card.json").exists()) if root.is_dir() else []


def default_model_name() -> str:
    """The bundled model used when none is given (``Resources/Models/models.json``'s ``default``)."""
    index = models_dir() / "models.json"
    if index.exists():
        return json.loads(index.read_text())["default"]
    names = bundled_models()
    if not names:
        raise SegXAIError(f"no bundled model in {models_dir()}; pass --model with a model folder")
    return names[0]


def build_network(card: ModelCard) -> nn.Module:
    """An untrained network of the card's architecture, with the card's class count as output channels."""
    args = dict(card.arch_args)
    if card.architecture == "residual_unet":
        from .unet import residual_unet

        return residual_unet(in_channels=1, out_channels=card.num_classes, **args)
    if card.architecture == "transunet3d":
        from .transunet import TransUNet3D

        args.setdefault("img_size", tuple(card.patch))
        return TransUNet3D(in_channels=1, out_channels=card.num_classes, **args)
    raise SegXAIError(f"model {card.name!r} has unknown architecture {card.architecture!r}; known: {', '.join(ARCHITECTURES)}")


@dataclass
class LoadedModel:
    """A network ready for inference, with its card, its pre-processing (forward and inverse) and its windows.

    This is the one seam between model formats and everything downstream: SegXAI's own cards get the card's
    `Preprocessing` and MONAI's windows; an adapter (``models/adapters``: nnU-Net v2, …) supplies its format's
    own pre-processing (``custom_preprocessing``: called on a `Volume`, returns a `Preprocessed` that knows its
    inverse, with a ``window`` mapping HU to the network's input) and windows (``custom_windowing``).
    """

    network: nn.Module
    card: ModelCard
    folder: Path
    format: str = "segxai"
    custom_preprocessing: object = None
    custom_windowing: object = None

    @property
    def preprocessing(self) -> Preprocessing:
        if self.custom_preprocessing is not None:
            return self.custom_preprocessing
        from ..preprocessing import Preprocessing

        return Preprocessing(self.card.spacing, self.card.window, self.card.orientation)

    @property
    def windowing(self):
        """The model's sliding windows (`windowing.Windowing`): the segmentation and every explainer use them."""
        if self.custom_windowing is not None:
            return self.custom_windowing
        from ..windowing import MonaiWindowing

        return MonaiWindowing(self.card.patch, self.card.overlap)

    def describe(self) -> str:
        """One line saying what was loaded (format, classes, spacing, folds), for the CLI and the Slicer log."""
        if self.format == "nnunetv2":
            from .adapters.nnunet import describe

            return describe(self)
        if self.format == "monai-bundle":
            from .adapters.monai_bundle import describe as describe_bundle

            return describe_bundle(self)
        classes = ", ".join(c.name for c in self.card.foreground)
        return (f"SegXAI model {self.card.name} ({self.card.architecture}) from {self.folder} — spacing "
                f"{self.card.spacing} mm, patch {self.card.patch}; {len(self.card.foreground)} classes: {classes}")


def resolve_model_folder(name_or_path: str | os.PathLike | None) -> Path:
    """A model folder from a bundled name, a folder path, or a path to a card.json."""
    if name_or_path is None or str(name_or_path) == "":
        name_or_path = default_model_name()
    path = Path(name_or_path)
    if path.is_file() and path.name.endswith(".json"):
        return path.parent
    if path.is_dir():
        return path
    bundled = models_dir() / str(name_or_path)
    if bundled.is_dir():
        return bundled
    known = ", ".join(bundled_models()) or "none"
    raise SegXAIError(f"no model {name_or_path!r}: not a folder with a card.json, and not a bundled model ({known})")


def read_card(name_or_path: str | os.PathLike | None) -> ModelCard:
    """The card of a bundled name or model folder of any recognised format, without loading weights or torch
    (an nnU-Net folder's card is made from its dataset.json and plans.json)."""
    from .adapters import recognise

    kind = recognise(name_or_path)
    if kind == "nnunetv2":
        from .adapters.nnunet import read_model

        return read_model(name_or_path)[0]
    if kind == "monai-bundle":  # a bundle's classes need its network and metadata: loaded on the CPU
        return load_model(name_or_path, "cpu").card
    return ModelCard.load(resolve_model_folder(name_or_path) / "card.json")


def _check_channels(network: nn.Module, card: ModelCard, source: Path) -> None:
    """Run a zero patch through the network and check it returns one channel per card class."""
    import torch

    with torch.no_grad():
        out = network(torch.zeros(1, 1, *card.patch))
    if out.ndim != 5 or out.shape[1] != card.num_classes:
        raise SegXAIError(
            f"{source} returns {tuple(out.shape[1:2])} output channels but its card lists {card.num_classes} classes; "
            "the weights and the card do not belong together"
        )


def load_model(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a bundled model by name, a user's model folder (card.json + weights), or a folder of another format
    recognised by its files (an nnU-Net v2 trained-model folder: ``models/adapters``)."""
    import torch

    from .adapters import load_foreign

    foreign = load_foreign(name_or_path, device)
    if foreign is not None:
        return foreign
    folder = resolve_model_folder(name_or_path)
    card = ModelCard.load(folder / "card.json")
    weights = folder / card.weights
    if not weights.exists():
        raise SegXAIError(f"model {card.name!r}: weights file {weights} is missing")
    if card.architecture == "torchscript":
        try:
            network = torch.jit.load(str(weights), map_location="cpu")
        except Exception as err:
            raise SegXAIError(f"{weights} is not a loadable TorchScript file ({str(err).splitlines()[0][:120]})") from None
        _check_channels(network, card, weights)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise SegXAIError(f"{weights} is corrupt or not a safetensors file ({str(err)[:120]}); re-download or retrain the model") from None
        network = build_network(card)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:200]
            raise SegXAIError(f"{weights} does not fit the {card.architecture} its card describes ({detail})") from None
    network.eval()
    return LoadedModel(network.to(device), card, folder)


def save_model(network: nn.Module, card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    card.weights = "model.safetensors"
    tmp = folder / ".model.safetensors.partial"
    save_file(state, str(tmp), metadata={"name": card.name, "architecture": card.architecture})
    os.replace(tmp, folder / card.weights)
    card.save(folder / "card.json")
    return folder
