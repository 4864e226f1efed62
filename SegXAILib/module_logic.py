"""The Slicer panel's decisions that need no Slicer: which volume a finished job belongs to, the run described in
plain words, the bundled sample CT for the Sample Data module, and the choices the panel's combo boxes offer.

SegXAI/SegXAI.py only moves values between widgets, MRML nodes and these functions.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

#: the device and region choices of the panel (parameter node ``Choice`` annotations use these)
DEVICE_CHOICES = ("auto", "cpu", "cuda")
REGION_CHOICES = ("predicted", "segment", "point", "whole")
LOAD_MODEL_ITEM = "Load model…"
SAMPLE_NAME = "SegXAI abdominal CT"
SAMPLE_CATEGORY = "SegXAI"


# ---- which volume a job belongs to --------------------------------------------------------------
@dataclass
class JobBook:
    """Jobs by the MRML ID of the volume they processed.

    A job starts on one volume; the user may select another before it ends. Its results must attach to the
    volume that was processed (:attr:`running_input`), and the metrics table must use the job of the volume
    that is selected when the table is made, never "the last job".
    """

    running_input: Optional[str] = None
    jobs: dict = field(default_factory=dict)

    def started(self, input_id: str) -> None:
        self.running_input = input_id

    def finished(self) -> Optional[str]:
        """The processed volume's ID (the job's results go there); the book no longer has a running job."""
        input_id, self.running_input = self.running_input, None
        return input_id

    def record(self, input_id: str, job: dict) -> None:
        self.jobs[input_id] = job

    def job_for(self, input_id: Optional[str]) -> Optional[dict]:
        return self.jobs.get(input_id) if input_id else None

    def forget(self, input_id: Optional[str]) -> None:
        self.jobs.pop(input_id, None)


# ---- the run in plain words ---------------------------------------------------------------------
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcampp": "Grad-CAM++", "ig": "Integrated gradients",
                "lrp": "LRP"}


def region_in_words(region: Optional[str], target: Optional[str] = None) -> str:
    """'predicted' → 'where the model finds liver'; 'point:10,20,30:15' → 'in a 15 mm ball around R 10, A 20, S 30'."""
    text = (region or "predicted").strip()
    head, _, rest = text.partition(":")
    thing = target or "the target class"
    if head == "predicted":
        return f"where the model finds {thing}"
    if head == "whole":
        return "in the whole volume"
    if head == "empty":
        return "in no region (an empty mask)"
    if head == "point":
        coords, _, radius = rest.partition(":")
        values = [v.strip() for v in coords.split(",")]
        if len(values) == 3:
            where = ", ".join(f"{axis} {float(v):g}" for axis, v in zip("RAS", values))
            return f"in a {float(radius or 10):g} mm ball around {where}"
        return f"around the point {rest}"
    if head in ("mask", "segment"):
        return "in the chosen segment"
    return f"in {text}"


def describe_run(provenance: dict, maps: list = ()) -> str:
    """One sentence for the panel: which methods explained which class, where, at which layer, with which model."""
    provenance = provenance or {}
    meta = dict(maps[0][2]) if maps else {}
    target = meta.get("target_class") or provenance.get("target_class")
    methods = [str(m[2].get("method", m[0])) for m in maps]
    parts = []
    if maps:
        names = " and ".join(METHOD_NAMES.get(m, m) for m in methods)
        region = region_in_words(provenance.get("region") or meta.get("region"), target)
        voxels = meta.get("region_voxels")
        size = f" ({int(voxels):,} voxels)" if isinstance(voxels, (int, float)) and voxels else ""
        verb = "explains" if len(methods) == 1 else "explain"
        parts.append(f"{names} {verb} {target or 'the default class'} {region}{size}")
        layer = meta.get("layer")
        parts.append(f"layer {layer}" if layer else "the architecture's default layer")
    else:
        parts.append("Segmentation only (no explanation method chosen)")
    if provenance.get("model"):
        parts.append(f"model {provenance['model']}" + (f" on {provenance['device']}" if provenance.get("device") else ""))
    return "; ".join(parts) + "."


# ---- the sample CT ------------------------------------------------------------------------------
def sample_ct(resources: Optional[Path] = None) -> Path:
    """The bundled sample CT (``Resources/Samples``); a clear error when the installation lacks it."""
    from .errors import SegXAIError
    from .models.store import resources_dir

    folder = Path(resources or resources_dir()) / "Samples"
    found = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nrrd")) if folder.is_dir() else []
    if not found:
        raise SegXAIError(f"no sample CT in {folder}; the SegXAI installation is incomplete (reinstall the extension)")
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_data_source(thumbnail: Optional[Path] = None, resources: Optional[Path] = None) -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``: the bundled CT by its
    ``file://`` URI (SampleData fetches it with urllib like any download) and its SHA-256."""
    path = sample_ct(resources)
    return {
        "category": SAMPLE_CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": path.resolve().as_uri(),
        "fileNames": path.name,
        "nodeNames": "SegXAI sample CT",
        "checksums": f"SHA256:{sha256(path)}",
        "thumbnailFileName": str(thumbnail) if thumbnail and Path(thumbnail).exists() else None,
        "loadFileType": "VolumeFile",
    }


# ---- models -------------------------------------------------------------------------------------
def model_items(bundled: list, loaded: dict) -> list:
    """The model list: bundled names, then loaded folders' names, then the 'Load model…' item."""
    return list(bundled) + [name for name in loaded if name not in bundled] + [LOAD_MODEL_ITEM]


def model_choice(text: str, loaded: dict) -> Optional[str]:
    """What to pass as ``model`` for the selected item: a loaded folder's path, a bundled name, or None."""
    if not text or text == LOAD_MODEL_ITEM:
        return None
    return loaded.get(text, text)


def card_of(manifest: dict):
    """The model card a finished job used (its folder is in the manifest; else the bundled model by name); None
    when it cannot be read any more (the folder was moved)."""
    from .models.store import read_card

    for where in (manifest.get("model_folder"), manifest.get("model")):
        if not where:
            continue
        try:
            return read_card(where)
        except Exception:
            continue
    return None


def target_classes(card) -> list:
    """The classes offered as explanation targets: those the card shows it learned (where the card measured
    them; an organ at 0 mL on every case is not offered), else every foreground class."""
    foreground = [c for c in card.classes if c.value != 0]
    try:
        from .display import shown_classes
    except ImportError:  # a SegXAILib without the display rules
        return [c.name for c in foreground]
    return [c.name for c in shown_classes(card.classes, card.metrics)] or [c.name for c in foreground]


def show_options(show_results: Callable, output_segmentation=None, show_3d: bool = False, common_scale: bool = True,
                 class_metrics: Optional[dict] = None) -> dict:
    """The keyword arguments of the panel's display choices that ``scene.show_results`` accepts."""
    wanted = {"show_3d": bool(show_3d), "scale": "family" if common_scale else "map"}
    if output_segmentation is not None:
        wanted["segmentation_node"] = output_segmentation
    if class_metrics:
        wanted["class_metrics"] = class_metrics
    return accepted(show_results, **wanted)


# ---- calling scene functions across versions ------------------------------------------------------
def accepted(function: Callable, **optional) -> dict:
    """The ``optional`` keyword arguments that ``function`` accepts (a newer scene API may take more)."""
    params = inspect.signature(function).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return dict(optional)
    return {k: v for k, v in optional.items() if k in params}
