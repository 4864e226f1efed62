"""The one per-case function every engine calls (local, Ray, a ``--part K/N`` shard): read the case, segment,
explain, score, evaluate against the reference when there is one, and put the outputs in ``OUT/<case>/`` exactly
as ``segxai explain -o OUT/<case>`` writes them. The outputs are written into a hidden staging folder that is
renamed into place whole, so a killed worker leaves no partial file behind; a bad case returns a failed record
with one line saying why instead of raising.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import SegXAIError
from ..volume import Volume, read_volume, stem as file_stem

#: test hook: "<case>:exit" kills the process (SIGKILL) while that case's files are half written, "<case>:hang"
#: makes it wait there (for an outside kill); fires once, when the marker file SEGXAI_BATCH_FAULT_MARKER is absent
FAULT_ENV, FAULT_MARKER_ENV = "SEGXAI_BATCH_FAULT", "SEGXAI_BATCH_FAULT_MARKER"
STAGING_PREFIX, RETIRED_PREFIX = ".partial-", ".retired-"


@dataclass(frozen=True)
class BatchParams:
    """What ``segxai batch`` passes to every case's explanation (the same meaning as ``segxai explain``'s options)."""

    methods: tuple = ()
    target: Optional[str] = None
    region: str = "predicted"
    layer: Optional[str] = None
    steps: int = 32
    baseline: str = "blur"
    scores: tuple = ("localisation", "complexity", "deletion_insertion")
    quality: bool = True
    curve_steps: int = 10
    precision: str = "auto"
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None

    def key(self) -> dict:
        """The parameters a case's result depends on (the manifest compares them); device and threads are not."""
        out = asdict(self)
        out.pop("device"), out.pop("threads")
        return out


@dataclass
class LoadedCase:
    """A case read from disk: the CT, the reference in the model's label values (or None), and reading time."""

    spec: object
    volume: Optional[Volume] = None
    reference: Optional[Volume] = None
    error: Optional[str] = None
    seconds: dict = field(default_factory=dict)
    preprocessed: object = None      # the model's pre-processing of the CT, when the read task did it (Ray)


def one_line(err: BaseException) -> str:
    """A failure as one line: SegXAI's own message, else the exception's type and first line."""
    if isinstance(err, SegXAIError):
        return str(err).strip().splitlines()[0] if str(err).strip() else "error"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def read_case(spec, preprocessing=None) -> LoadedCase:
    """Read the CT and the reference (on the declared geometry where the case list gives one); errors are kept.

    ``preprocessing`` (the model's ``LoadedModel.preprocessing``): also resample/normalise the CT here, so that a
    Ray read task does it while the workers infer."""
    t = time.perf_counter()
    loaded = LoadedCase(spec)
    try:
        volume = read_volume(spec.image)
        check_hounsfield(volume, spec.image)
        reference = read_volume(spec.reference) if spec.reference else None
        if spec.geometry:
            from ..training import declared_geometry

            matrix = declared_geometry(spec.geometry, f"case {spec.name}")
            volume.ijk_to_ras = matrix
            if reference is not None:
                if reference.shape != volume.shape:
                    raise SegXAIError(f"case {spec.name}: reference shape {reference.shape} differs from the CT's {volume.shape}")
                reference.ijk_to_ras = matrix.copy()
        loaded.volume, loaded.reference = volume, reference
        loaded.seconds["read"] = time.perf_counter() - t
        if preprocessing is not None:
            t = time.perf_counter()
            loaded.preprocessed = preprocessing(volume)
            loaded.seconds["preprocess"] = time.perf_counter() - t
    except Exception as err:  # a bad case must not stop the others
        loaded.error = one_line(err)
        loaded.seconds.setdefault("read", time.perf_counter() - t)
    return loaded


#: every CT in Hounsfield units holds air (about −1000 HU) somewhere: outside the body, in the lungs or the bowel
AIR_HU = -500.0


def check_hounsfield(volume: Volume, name) -> None:
    """Refuse an image with no voxel below −500 HU: not a CT in HU (an MRI, a label map, a CT stored unscaled)."""
    lowest = float(np.min(volume.array))
    if lowest > AIR_HU:
        raise SegXAIError(f"{name} has no voxel below {AIR_HU:g} HU (lowest {lowest:g}), so it is not a CT in Hounsfield "
                          "units (an MRI, a label map, or a CT without its rescale); give a CT in HU")


def reference_groups(spec, card, reference: Volume) -> dict:
    """Reference value → class names: the case list's meanings, else value n = model class n (values present only)."""
    if spec.groups is not None:
        return {int(k): list(v) for k, v in spec.groups.items()}
    present = set(np.unique(reference.array).tolist())
    return {c.value: [c.name] for c in card.foreground if c.value in present}


def reference_in_model_values(reference: Volume, groups: dict, card) -> Volume:
    """The reference relabelled to the model's class values (a group of several classes takes its first's value)."""
    values = {c.name.lower(): c.value for c in card.classes}
    out = np.zeros(reference.shape, np.uint8)
    for value, names in groups.items():
        known = [values[n.lower()] for n in names if n.lower() in values]
        if known:
            out[reference.array == value] = known[0]
    return reference.like(out)


def reviewable(raw: Optional[Volume], relabelled: Optional[Volume], value: int) -> bool:
    """True when the reference file, read as ``segxai review`` reads it (the target's label value), is the target
    the case was scored against; a file whose labels the case list renames is then not recorded in the report."""
    if raw is None or relabelled is None:
        return False
    return bool(np.array_equal(raw.array == value, relabelled.array == value))


def reference_metrics(labels: Volume, reference: Volume, groups: dict, card) -> dict:
    """Dice, IoU, HD95, volumes per reference group (named by its classes), on the CT's grid."""
    from ..metrics import mask_metrics
    from ..preprocessing import labels_on_grid

    values = {c.name.lower(): c.value for c in card.classes}
    ref = labels_on_grid(reference, labels.grid)
    merged = {}
    for value, names in sorted(groups.items()):
        pred_values = [values[n.lower()] for n in names if n.lower() in values]
        if pred_values:
            merged.setdefault("+".join(names), (pred_values, []))[1].append(value)
    spacing_kji = labels.spacing[::-1]
    return {key: mask_metrics(np.isin(labels.array, pv), np.isin(ref, rv), spacing_kji, labels.voxel_volume_ml)
            for key, (pv, rv) in merged.items()}


def scalar_scores(result) -> dict:
    """Each method's scalar quality scores and checks as ``<method>_<score>`` columns (curves left out)."""
    out = {}
    for name, m in result.methods.items():
        for k, v in list(m.quality.items()) + [(k, v) for k, v in m.checks.items() if k.endswith("error")]:
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                out[f"{name}_{k}"] = float(v)
    return out


def maybe_fault(case_name: str) -> None:
    """The fault-injection hook of the tests (see ``FAULT_ENV``); does nothing unless the variables are set."""
    spec, marker = os.environ.get(FAULT_ENV, ""), os.environ.get(FAULT_MARKER_ENV, "")
    if not spec or not marker or ":" not in spec:
        return
    name, action = spec.rsplit(":", 1)
    if name != case_name or Path(marker).exists():
        return
    Path(marker).write_text(f"{os.getpid()}\n")
    if action == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        for _ in range(600):  # bounded: an outside kill is expected long before
            time.sleep(0.5)


def remove_leftovers(out_dir: Path, case_name: str) -> None:
    """Staging and retired folders of ``case_name`` left by a killed run (only this case's, so shards never clash)."""
    for prefix in (STAGING_PREFIX, RETIRED_PREFIX):
        for p in out_dir.glob(f"{prefix}{case_name}-*"):
            shutil.rmtree(p, ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Put a finished staging folder in place of ``final``: a rename, with an older result retired first."""
    retired = None
    if final.exists():
        retired = final.with_name(f"{RETIRED_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, retired)
    os.replace(staging, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def process_case(loaded: LoadedCase, model, params: BatchParams, out_dir: str | os.PathLike) -> dict:
    """Segment, explain, score and evaluate one read case; its files land in ``OUT/<case>/``; returns its record."""
    from ..cli_explain import write_explanation
    from ..explaining import explain_volume, parse_methods
    from ..targets import parse_region

    spec, out_dir = loaded.spec, Path(out_dir)
    record = {"case": spec.name, "image": str(spec.image), "reference": spec.reference, "status": "failed",
              "error": loaded.error, "rows": [], "seconds": dict(loaded.seconds)}
    if loaded.error:
        return record
    staging = out_dir / f"{STAGING_PREFIX}{spec.name}-{uuid.uuid4().hex[:8]}"
    try:
        card = model.card
        methods = parse_methods(params.methods or [card.explanation.get("default_method", "gradcam")])
        target = spec.target or params.target
        info = card.class_named(target) if target else card.foreground[0]
        groups = reference_groups(spec, card, loaded.reference) if loaded.reference is not None else None
        reference = reference_in_model_values(loaded.reference, groups, card) if groups else None
        if reference is not None and not np.any(reference.array == info.value):
            reference = None  # nothing of the target in the reference: localise against the prediction, as explain does
        segmentation = None
        record["preprocessed_by"] = "read task" if loaded.preprocessed is not None else "worker"
        if loaded.preprocessed is not None:  # pre-processed by the read task
            from ..pipeline import segment

            segmentation = segment(loaded.volume, model, params.device, preprocessed=loaded.preprocessed)
        result = explain_volume(loaded.volume, model, methods, info.name, parse_region(params.region), params.layer,
                                params.steps, params.baseline, "composite", params.device, params.quality,
                                params.curve_steps, False, params.precision, segmentation, reference=reference,
                                scores=list(params.scores), seed=params.seed)
        seg = result.segmentation.seconds
        record["seconds"].update(preprocess=loaded.seconds.get("preprocess", seg.get("preprocess", 0.0)),
                                 segment=seg.get("inference", 0.0) + seg.get("postprocess", 0.0),
                                 explain=result.seconds["total"] - result.seconds["segment"])
        t = time.perf_counter()
        rows = case_rows(result, info, card, loaded, groups)
        record["seconds"]["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        staging.mkdir(parents=True)
        write_explanation(result, card.classes, staging, file_stem(spec.image), info.name, spec.image,
                          spec.reference if reviewable(loaded.reference, reference, info.value) else None,
                          params.quality, listed_dir=out_dir / spec.name)
        maybe_fault(spec.name)
        publish(staging, out_dir / spec.name)
        record["seconds"]["write"] = time.perf_counter() - t
        record["rows"], record["status"], record["error"] = rows, "done", None
    except Exception as err:  # a bad case is recorded and the others go on
        record["error"] = one_line(err)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return record


def case_rows(result, info, card, loaded: LoadedCase, groups: Optional[dict]) -> list:
    """One row per model class (and per multi-class reference group): volume, Dice/HD95, the target's scores."""
    labels = result.segmentation.labels
    ml = labels.voxel_volume_ml
    counts = np.bincount(labels.array.ravel(), minlength=card.num_classes)
    metrics = reference_metrics(labels, loaded.reference, groups, card) if groups else {}
    rows = {}
    for c in card.foreground:
        rows[c.name] = {"class": c.name, "volume_ml": float(counts[c.value]) * ml}
    values = {c.name.lower(): c.value for c in card.classes}
    for key, m in metrics.items():
        row = rows.setdefault(key, {"class": key, "volume_ml": float(sum(counts[values[n.lower()]] for n in key.split("+")
                                                                         if n.lower() in values)) * ml})
        row.update(dice=m["dice"], iou=m["iou"], hd95_mm=m["hd95_mm"], volume_ref_ml=m["volume_ref_ml"])
    rows[info.name].update(explained=True, target_region=result.target.description, **scalar_scores(result))
    return list(rows.values())


def run_case(spec, model, params: BatchParams, out_dir) -> dict:
    """Read and process one case: what the local engine and a ``--part`` shard call per case."""
    return process_case(read_case(spec), model, params, out_dir)
