"""nnU-Net v2 trained-model folders as SegXAI models: recognised by their files, read without running their code.

A trained-model folder (``<Dataset>/<Trainer>__<Plans>__<configuration>/``, as ``nnUNetv2_train`` writes it and
TotalSegmentator keeps it) holds ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth``. Every
fold found is used and the folds are averaged, as ``nnUNetPredictor`` does; pointing at one ``fold_N`` folder
uses that fold alone; pointing at a dataset folder with one trained-model folder inside uses that one.
Supported: 3D configurations (3d_fullres, 3d_lowres and their variants) of PlainConvUNet / ResidualEncoderUNet
with one CT input channel (CTNormalization) and plain labels. Refused with a line that says why: 2D
configurations, cascade stages that read the previous stage's segmentation, region-based training, several input
channels, other normalisations (z-score: MRI-style models), other architectures and resampling functions.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from ...errors import SegXAIError
from ..card import ClassInfo, ModelCard

CHECKPOINTS = ("checkpoint_final.pth",)
_FOLD = re.compile(r"^fold_(\d+|all)$")


def _fold_dirs(folder: Path) -> list:
    """The numbered folds with a checkpoint; ``fold_all`` only when it is the only one (nnU-Net's own
    auto-detection leaves it out of the ensemble: it is trained on every case, the others on their splits)."""
    folds = sorted((p for p in folder.iterdir() if p.is_dir() and _FOLD.match(p.name)
                    and any((p / c).is_file() for c in CHECKPOINTS)), key=lambda p: p.name)
    numbered = [p for p in folds if p.name != "fold_all"]
    return numbered or folds


def find_trained_model(path: "str | Path") -> Optional[tuple]:
    """(trained-model folder, fold folders) when ``path`` is an nnU-Net v2 model (see module docstring), else None."""
    path = Path(path)
    if not path.is_dir():
        return None
    if _FOLD.match(path.name) and (path.parent / "plans.json").is_file():
        return (path.parent, [path]) if any((path / c).is_file() for c in CHECKPOINTS) else (path.parent, [])
    if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return path, _fold_dirs(path)
    inside = [p for p in path.iterdir() if p.is_dir() and (p / "plans.json").is_file() and (p / "dataset.json").is_file()]
    if len(inside) == 1:
        return inside[0], _fold_dirs(inside[0])
    if len(inside) > 1:
        names = ", ".join(sorted(p.name for p in inside))
        raise SegXAIError(f"{path} holds several nnU-Net trained models ({names}); pass the folder of the one to use")
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SegXAIError(f"{path} is not readable JSON ({err}); is this an nnU-Net v2 model folder?") from None


def resolve_configuration(plans: dict, name: str) -> dict:
    """A configuration of the plans with its ``inherits_from`` parents merged in (nnU-Net's PlansManager rule)."""
    configurations = plans.get("configurations") or {}
    seen = []
    merged: dict = {}
    while True:
        if name not in configurations:
            raise SegXAIError(f"the plans have no configuration {name!r}; they have {', '.join(configurations)}")
        if name in seen:
            raise SegXAIError(f"the plans' configurations inherit in a circle: {' → '.join(seen + [name])}")
        seen.append(name)
        entry = configurations[name]
        merged = {**entry, **merged}
        parent = entry.get("inherits_from")
        if not parent:
            return merged
        name = parent


def class_table(dataset: dict) -> list:
    """ClassInfo for each label in dataset.json, in label order; region-based training is refused."""
    labels = dict(dataset.get("labels") or {})
    labels.pop("ignore", None)  # nnU-Net's ignore label is not predicted
    if any(isinstance(v, (list, tuple)) for v in labels.values()) or "regions_class_order" in dataset:
        raise SegXAIError("this nnU-Net model was trained on regions (overlapping label sets); SegXAI explains "
                          "models with one label per voxel")
    values = sorted((int(v), str(k)) for k, v in labels.items())
    if [v for v, _ in values] != list(range(len(values))):
        raise SegXAIError(f"dataset.json labels must run 0, 1, 2, … without gaps; found {[v for v, _ in values]}")
    return [ClassInfo.known(v, n) for v, n in values]


def read_model(path: "str | Path") -> tuple:
    """(card, trained-model folder, fold folders, configuration, plans) from the folder's JSON files alone: no
    checkpoint is read and torch is not imported (the Slicer panel lists classes before PyTorch is installed)."""
    found = find_trained_model(path)
    if found is None:
        raise SegXAIError(f"{path} is not an nnU-Net v2 model folder (dataset.json, plans.json, fold_N/)")
    folder, folds = found
    if not folds:
        raise SegXAIError(f"{folder} has no fold_N/{CHECKPOINTS[0]}; train a fold first or point at a folder that has "
                          "one")
    dataset, plans = _read_json(folder / "dataset.json"), _read_json(folder / "plans.json")
    classes = class_table(dataset)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise SegXAIError(f"this nnU-Net model reads {len(channels)} input channels "
                          f"({', '.join(map(str, channels.values()))}); SegXAI explains single-channel (CT) models")
    name = folder.name.split("__")[-1] if folder.name.count("__") == 2 else ""
    configuration = _check_configuration(plans, name) if name else {}
    return _card(folder, folds, classes, name, configuration), folder, folds, name, plans


def _check_configuration(plans: dict, name: str) -> dict:
    """The resolved configuration, or one line saying why SegXAI cannot run it."""
    configuration = resolve_configuration(plans, name)
    if configuration.get("previous_stage"):
        raise SegXAIError(f"configuration {name!r} is a cascade stage that reads the segmentation of "
                          f"{configuration['previous_stage']!r}; explain the {configuration['previous_stage']} model "
                          "or a 3d_fullres model instead")
    if len(configuration.get("patch_size", [])) != 3:
        raise SegXAIError(f"configuration {name!r} is 2D; SegXAI explains 3D configurations (3d_fullres, 3d_lowres)")
    scheme = (configuration.get("normalization_schemes") or ["CTNormalization"])[0]
    if scheme != "CTNormalization":
        raise SegXAIError(f"this nnU-Net model normalises its input with {scheme}; SegXAI explains CT models "
                          "(CTNormalization), whose input has a fixed HU scale for its baselines")
    if "architecture" not in configuration:
        raise SegXAIError("these plans predate nnU-Net v2.4 (no 'architecture' entry); re-plan with a current "
                          "nnU-Net, or convert the model")
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if configuration.get(key, "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
            raise SegXAIError(f"nnU-Net resampling {configuration[key]!r} ({key}) is not supported; supported: "
                              "resample_data_or_seg_to_shape")
    return configuration


def _card(folder: Path, folds: list, classes: list, name: str, configuration: dict, extra: Optional[dict] = None):
    patch = [int(p) for p in configuration.get("patch_size", [])]
    spacing = [float(s) for s in configuration.get("spacing", [])]
    return ModelCard(
        name=f"{folder.parent.name}/{folder.name}", architecture="nnunetv2", classes=classes,
        spacing=spacing[::-1], window=[0.0, 1.0], patch=patch, weights="",
        description=f"nnU-Net v2 model {folder}", intended_use="As its authors trained it; SegXAI only reads and explains it.",
        extra={"nnunet": {"configuration": name, "folds": [f.name for f in folds], "spacing_transposed": spacing,
                          **(extra or {})}},
    )


def load_nnunet(path: "str | Path", device="cpu", mirroring: bool = True):
    """The nnU-Net v2 model at ``path`` as a `LoadedModel` with nnU-Net's pre-processing, windows and inverse."""
    from ...windowing import NnUNetWindowing
    from ..safe_checkpoint import load_checkpoint
    from ..store import LoadedModel
    from .nnunet_network import FoldEnsemble, MirroredNetwork, build_network
    from .nnunet_preprocessing import NnUNetPreprocessing, Normalisation

    card, folder, folds, name, plans = read_model(path)
    checkpoints = {fold.name: load_checkpoint(fold / CHECKPOINTS[0]) for fold in folds}
    first = next(iter(checkpoints.values()))
    name = (first.get("init_args") or {}).get("configuration") or name
    configuration = _check_configuration(plans, name)
    scheme = "CTNormalization"  # the only one _check_configuration lets through
    props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0", {})
    needed = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if not all(isinstance(props.get(k), (int, float)) for k in needed):
        raise SegXAIError(f"{folder / 'plans.json'} lacks the CT intensity properties ({', '.join(needed)} under "
                          "foreground_intensity_properties_per_channel/0) that CT normalisation needs")
    normalisation = Normalisation(scheme, props["mean"], props["std"], props["percentile_00_5"],
                                  props["percentile_99_5"])
    preprocessing = NnUNetPreprocessing(plans.get("transpose_forward", [0, 1, 2]), configuration["spacing"],
                                        normalisation, configuration.get("resampling_fn_data_kwargs") or {},
                                        configuration.get("resampling_fn_probabilities_kwargs") or {})
    axes = first.get("inference_allowed_mirroring_axes") if mirroring else None
    members = {}
    for fold, checkpoint in checkpoints.items():
        network = build_network(configuration["architecture"], 1, len(card.classes))
        weights = checkpoint.get("network_weights")
        where = folder / fold / CHECKPOINTS[0]
        if not isinstance(weights, dict):
            raise SegXAIError(f"{where} has no network_weights; is it an nnU-Net v2 checkpoint?")
        try:
            network.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise SegXAIError(f"{where} does not fit the network its plans describe "
                              f"({' '.join(str(err).split())[:200]})") from None
        network.eval()
        members[fold] = MirroredNetwork(network, axes).eval() if axes else network
    net = next(iter(members.values())) if len(members) == 1 else FoldEnsemble(members).eval()
    card = _card(folder, folds, card.classes, name, configuration, {
        "trainer": first.get("trainer_name", ""), "mirroring_axes": list(axes or []), "normalisation": scheme,
        "architecture": configuration["architecture"]["network_class_name"],
        "transpose_forward": plans.get("transpose_forward", [0, 1, 2])})
    card.window = [normalisation.lower, normalisation.upper]
    return LoadedModel(net.to(device), card, folder, format="nnunetv2", custom_preprocessing=preprocessing,
                       custom_windowing=NnUNetWindowing(card.patch, step=0.5))


def describe(model) -> str:
    """One line of what was recognised, for the CLI and the Slicer log."""
    info = model.card.extra.get("nnunet", {})
    classes = ", ".join(c.name for c in model.card.foreground)
    mirror = f"mirroring axes {info.get('mirroring_axes')}" if info.get("mirroring_axes") else "no mirroring"
    return (f"nnU-Net v2 model {model.folder} — configuration {info.get('configuration')}, folds "
            f"{', '.join(info.get('folds', []))}, {info.get('architecture', '').split('.')[-1]}, spacing "
            f"{info.get('spacing_transposed')} mm, patch {model.card.patch}, {info.get('normalisation')}, {mirror}; "
            f"{len(model.card.foreground)} classes: {classes}")
