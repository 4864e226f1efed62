"""What ``segxai batch CASES`` runs: a folder of volumes, a glob, a CSV (image, optional reference and target), or a
JSON case list (``configs/cases/*.json``, with per-case label meanings), each turned into :class:`CaseSpec` rows
with unique names, so that every case gets its own output folder ``OUT/<name>/``."""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import SegXAIError
from ..volume import split_suffix, stem

#: CSV column names accepted for each role (first match wins, case-insensitive)
IMAGE_COLUMNS = ("image", "ct", "path")
REFERENCE_COLUMNS = ("reference", "label", "labels", "reference_label")
TARGET_COLUMNS = ("target", "class")
NAME_COLUMNS = ("case", "id", "name")


@dataclass(frozen=True)
class CaseSpec:
    """One case to run: its output folder name, its CT, and optionally a reference label and a target class.

    ``groups`` maps a reference label value to the class names it means (from a JSON case list); ``None``
    means value n is the model's class n, as ``segxai evaluate --images/--labels`` reads labels.
    """

    name: str
    image: str
    reference: Optional[str] = None
    target: Optional[str] = None
    groups: Optional[dict] = None
    geometry: Optional[dict] = field(default=None, hash=False, compare=False)


def read_cases(source: str) -> list:
    """The cases named by ``source`` (folder, glob, .csv or .json case list), sorted by name, names unique."""
    path = Path(source)
    if path.is_dir():
        cases = _from_folder(path)
    elif path.suffix.lower() == ".csv" and path.is_file():
        cases = _from_csv(path)
    elif path.suffix.lower() == ".json" and path.is_file():
        cases = _from_case_list(path)
    elif any(ch in source for ch in "*?["):
        matches = sorted(glob.glob(source))
        if not matches:
            raise SegXAIError(f"the pattern {source} matches no file; check the path (quote it so the shell leaves it to segxai)")
        cases = _named([(Path(m), None, None) for m in matches])
    elif path.is_file():
        cases = _named([(path, None, None)])
    else:
        raise SegXAIError(f"no such folder, CSV, case list or pattern: {source}")
    if not cases:
        raise SegXAIError(f"{source} holds no CT volume (NIfTI, NRRD, MHA) and no DICOM folder; nothing to run")
    return sorted(cases, key=lambda c: c.name)


def _from_folder(folder: Path) -> list:
    """Volumes in the folder; if there are none, its sub-folders (each a DICOM series)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and split_suffix(p.name)[1] and not p.name.endswith(".seg.nrrd"))
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return _named([(p, None, None) for p in files])


def _column(header: list, wanted: tuple) -> Optional[str]:
    lower = {h.strip().lower(): h for h in header if h}
    return next((lower[w] for w in wanted if w in lower), None)


def _from_csv(path: Path) -> list:
    """Rows of a CSV: an image column (paths relative to the CSV's folder), optional reference, target, case."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        image_col = _column(header, IMAGE_COLUMNS)
        if image_col is None:
            raise SegXAIError(f"{path} has no image column (one of {', '.join(IMAGE_COLUMNS)}); its columns are: {', '.join(header)}")
        ref_col, target_col, name_col = (_column(header, c) for c in (REFERENCE_COLUMNS, TARGET_COLUMNS, NAME_COLUMNS))
        rows = []
        for n, row in enumerate(reader, start=2):
            image = (row.get(image_col) or "").strip()
            if not image:
                raise SegXAIError(f"{path} line {n}: the image column is empty; give a path or delete the line")
            ref = (row.get(ref_col) or "").strip() if ref_col else ""
            rows.append((_relative(path.parent, image), _relative(path.parent, ref) if ref else None,
                         ((row.get(target_col) or "").strip() or None) if target_col else None,
                         ((row.get(name_col) or "").strip() or None) if name_col else None))
    named = _named([(img, ref, target) for img, ref, target, _ in rows], [r[3] for r in rows])
    return named


def _from_case_list(path: Path) -> list:
    """A JSON case list (``cases`` with id, image, label, groups; ``data_root`` relative to the file)."""
    try:
        raw = json.loads(path.read_text())
        root = (path.parent / raw.get("data_root", ".")).resolve()
        cases = [CaseSpec(str(c["id"]), str(root / c["image"]), str(root / c["label"]) if c.get("label") else None,
                          c.get("target"), {int(k): list(v) for k, v in c["groups"].items()} if c.get("groups") else None,
                          c.get("geometry"))
                 for c in raw["cases"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SegXAIError(f"{path} is not a case list (JSON with cases: id, image, label, groups): {err}") from None
    _check_unique([c.name for c in cases], path)
    return cases


def _relative(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _named(items: list, names: Optional[list] = None) -> list:
    """CaseSpecs named by the given name, else the file's stem; files whose stems clash (``*/ct.nii.gz``) are named
    by their folder, or by folder-stem where the folders' names clash too."""
    stems = [stem(p) for p, _, _ in items]
    parents = [Path(p).resolve().parent.name for p, _, _ in items]
    chosen = []
    for i, (p, _, _) in enumerate(items):
        given = names[i] if names else None
        if given:
            chosen.append(given)
        elif stems.count(stems[i]) > 1:
            same = [parents[j] for j in range(len(items)) if stems[j] == stems[i]]
            chosen.append(parents[i] if same.count(parents[i]) == 1 else f"{parents[i]}-{stems[i]}")
        else:
            chosen.append(stems[i])
    _check_unique(chosen, "the cases")
    return [CaseSpec(n, os.path.abspath(p), os.path.abspath(r) if r else None, t) for n, (p, r, t) in zip(chosen, items)]


def _check_unique(names: list, where) -> None:
    bad = [n for n in names if not n or n.startswith(".") or "/" in n or "\\" in n]
    if bad:
        raise SegXAIError(f"{where}: case name(s) {bad} cannot be folder names; name the cases with a 'case' column")
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SegXAIError(f"{where}: several cases are named {', '.join(clashes)}; their outputs would collide, "
                          "give them distinct names (a 'case' column)")


def select_part(cases: list, part: Optional[str]) -> list:
    """The ``K/N`` shard of ``cases`` (every N-th case from the K-th, K from 1), for one scheduler job of N."""
    if not part:
        return cases
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise SegXAIError(f"--part must be K/N with whole numbers, e.g. 2/8; got {part!r}") from None
    if not 1 <= k <= n:
        raise SegXAIError(f"--part {part}: K must be between 1 and N")
    return [c for i, c in enumerate(cases) if i % n == k - 1]
