"""The model card: everything besides the weights that a model needs to be used and trusted.

A card is JSON (``card.json`` beside the weights): architecture and its arguments, the classes (label value,
name, colour, standard terminology with SNOMED CT codes as in Slicer's terminology lists), the input the
model expects (spacing, orientation, HU window, patch), post-processing, how it was trained and what it
measured. Users bring their own model as a card plus safetensors weights (or a TorchScript file).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SegXAIError

#: Slicer's default terminology context and the anatomic context its entries refer to.
CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
_ALTERED = ["SCT", "49755003", "Morphologically Altered Structure"]

#: classes SegXAI knows by name: colour (0–255) and terminology (category, type, modifier, region).
KNOWN_CLASSES = {
    "liver": {"color": [221, 130, 101], "category": _ANATOMY, "type": ["SCT", "10200004", "Liver"]},
    "liver tumor": {
        "color": [255, 224, 32],
        "category": _ALTERED,
        "type": ["SCT", "108369006", "Neoplasm"],
        "anatomicRegion": ["SCT", "10200004", "Liver"],
    },
    "spleen": {"color": [157, 108, 162], "category": _ANATOMY, "type": ["SCT", "78961009", "Spleen"]},
    "right kidney": {
        "color": [185, 102, 83],
        "category": _ANATOMY,
        "type": ["SCT", "64033007", "Kidney"],
        "typeModifier": ["SCT", "24028007", "Right"],
    },
    "left kidney": {
        "color": [185, 102, 83],
        "category": _ANATOMY,
        "type": ["SCT", "64033007", "Kidney"],
        "typeModifier": ["SCT", "7771000", "Left"],
    },
    "gallbladder": {"color": [139, 150, 98], "category": _ANATOMY, "type": ["SCT", "28231008", "Gallbladder"]},
    "stomach": {"color": [216, 132, 105], "category": _ANATOMY, "type": ["SCT", "69695003", "Stomach"]},
}


@dataclass
class ClassInfo:
    """One output class: its label value, name, colour (0–255 RGB) and Slicer terminology entry."""

    value: int
    name: str
    color: list = field(default_factory=lambda: [128, 174, 128])
    terminology: dict = field(default_factory=dict)

    @classmethod
    def known(cls, value: int, name: str) -> "ClassInfo":
        """A class with SegXAI's colour and terminology for a known name (liver, spleen, …; other models' names
        through ``terminology.lookup``); an unknown name keeps its name and gets no terminology."""
        entry = KNOWN_CLASSES.get(name.lower())
        if entry is None:  # other models' names (TotalSegmentator's kidney_right, pancreas, …)
            from .terminology import lookup

            entry = lookup(name)
        if entry is None:
            return cls(value, name)
        terminology = {"contextName": CONTEXT, "category": entry["category"], "type": entry["type"]}
        if "typeModifier" in entry:
            terminology["typeModifier"] = entry["typeModifier"]
        terminology["anatomicContextName"] = ANATOMIC_CONTEXT
        if "anatomicRegion" in entry:
            terminology["anatomicRegion"] = entry["anatomicRegion"]
        return cls(value, name, list(entry["color"]), terminology)

    @property
    def snomed_code(self) -> str:
        """The SNOMED CT code of the class's type (e.g. '10200004' for liver), '' if none."""
        return self.terminology.get("type", ["", "", ""])[1]

    def to_json(self) -> dict:
        return {"value": self.value, "name": self.name, "color": self.color, "terminology": self.terminology}


@dataclass
class ModelCard:
    """Architecture, classes, expected input and provenance of one model (see module docstring)."""

    name: str
    architecture: str  # "residual_unet", "transunet3d" or "torchscript"
    classes: list  # ClassInfo, background (value 0) first
    spacing: list  # mm along the model grid's i, j, k
    window: list  # [low, high] HU
    patch: list  # sliding-window size (K, J, I) in model voxels
    arch_args: dict = field(default_factory=dict)
    orientation: str = "LPS"
    overlap: float = 0.5
    weights: str = "model.safetensors"
    postprocessing: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    description: str = ""
    intended_use: str = "Research and education only; not for clinical use."
    limitations: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def foreground(self) -> list:
        return [c for c in self.classes if c.value != 0]

    @property
    def explanation(self) -> dict:
        """What the card says about explaining the model: ``default_layer`` (chosen by measurement),
        ``alternatives`` (other layers that measured well, best first), and how that was measured."""
        return dict(self.extra.get("explanation") or {})

    def class_named(self, name: str) -> ClassInfo:
        """The class whose name matches (case-insensitive); a clear error listing the names otherwise."""
        for c in self.classes:
            if c.name.lower() == name.lower():
                return c
        names = ", ".join(c.name for c in self.foreground)
        raise SegXAIError(f"model {self.name!r} has no class {name!r}; its classes are: {names}")

    def summary(self) -> str:
        """One paragraph for the terminal: name, architecture, classes, input, what it was trained on."""
        cases = self.training.get("cases", [])
        trained = ", ".join(f"{c.get('id')} ({c.get('source', '?')})" for c in cases) or "unknown data"
        lines = [
            f"model {self.name}: {self.architecture}, classes: {', '.join(c.name for c in self.foreground)}",
            f"  input: {self.spacing} mm {self.orientation}, HU window {self.window}, patch {self.patch}",
            f"  trained on: {trained}",
            f"  {self.intended_use}",
        ]
        return "\n".join(lines)

    # ---- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "description": self.description,
            "architecture": self.architecture,
            "arch_args": self.arch_args,
            "weights": self.weights,
            "classes": [c.to_json() for c in self.classes],
            "input": {
                "spacing": list(self.spacing),
                "orientation": self.orientation,
                "window": list(self.window),
                "patch": list(self.patch),
                "overlap": self.overlap,
            },
            "postprocessing": self.postprocessing,
            "training": self.training,
            "metrics": self.metrics,
            "intended_use": self.intended_use,
            "limitations": self.limitations,
        }
        out.update(self.extra)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: dict, source: str = "card") -> "ModelCard":
        try:
            inp = data["input"]
            classes = [ClassInfo(int(c["value"]), c["name"], list(c.get("color", [128, 174, 128])), c.get("terminology", {})) for c in data["classes"]]
            known = {
                "name", "description", "architecture", "arch_args", "weights", "classes", "input",
                "postprocessing", "training", "metrics", "intended_use", "limitations",
            }
            card = cls(
                name=data["name"],
                architecture=data["architecture"],
                classes=classes,
                spacing=[float(s) for s in inp["spacing"]],
                window=[float(w) for w in inp["window"]],
                patch=[int(p) for p in inp["patch"]],
                arch_args=data.get("arch_args", {}),
                orientation=inp.get("orientation", "LPS"),
                overlap=float(inp.get("overlap", 0.5)),
                weights=data.get("weights", "model.safetensors"),
                postprocessing=data.get("postprocessing", {}),
                training=data.get("training", {}),
                metrics=data.get("metrics", {}),
                description=data.get("description", ""),
                intended_use=data.get("intended_use", cls.intended_use),
                limitations=data.get("limitations", []),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SegXAIError(f"{source} is not a valid SegXAI model card (problem with {err}); see Resources/Models/*/card.json for the format") from None
        values = [c.value for c in card.classes]
        if values != list(range(len(values))):
            raise SegXAIError(f"{source}: class values must be 0, 1, 2, … in order (background first), got {values}")
        return card

    @classmethod
    def load(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SegXAIError(f"no model card at {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SegXAIError(f"model card {path} is not valid JSON ({err})") from None
        return cls.from_json(data, str(path))
