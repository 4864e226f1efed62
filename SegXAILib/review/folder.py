"""Reading a results folder that ``segxai explain`` wrote, safely: only files inside it, never a write.

A case is one ``<stem>_explain.json`` with its ``<stem>_<method>_<class>.nrrd`` maps, ``<stem>.seg.nrrd`` and
``<stem>_labels.nii.gz``. File names are rebuilt from the stem, method and class (the report's own ``files`` paths
are not trusted); every path is resolved and refused when it leaves the folder (``..``, a symlink out).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import SegXAIError

REPORT_SUFFIX = "_explain.json"
#: CT file names looked for inside the folder, beside the results, before the report's ``input``
CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` resolved; a SegXAIError when ``name`` is not a plain file name or the file lies outside
    ``folder`` (path traversal, a symlink out)."""
    root = Path(folder).resolve()
    name = str(name)
    path = (root / name).resolve()
    if "/" in name or "\\" in name or name in ("", ".", "..") or root not in path.parents:
        raise SegXAIError(f"refused {name!r}: it lies outside the results folder {root}")
    return path


@dataclass
class Case:
    """One explained CT of the folder: its report and the files that belong to it (all inside the folder)."""

    stem: str
    report: dict
    maps: dict                       # method -> path of its map
    labels: Optional[Path]
    segmentation: Optional[Path]
    ct: Optional[Path]
    notes: list = field(default_factory=list)
    folder: str = ""                 # the sub-folder it lies in (segxai batch writes OUT/<case>/), "" at the top

    @property
    def key(self) -> str:
        """The case's name in the page's case list: ``<sub-folder>/<stem>`` for a batch folder's case, else its stem."""
        return f"{self.folder}/{self.stem}" if self.folder else self.stem

    @property
    def target_class(self) -> str:
        return (self.report.get("target") or {}).get("class") or ""

    def describe(self) -> dict:
        """Target, region, layer and model in plain words (from the report)."""
        target = self.report.get("target") or {}
        return {"Model": self.report.get("model") or "unknown",
                "Target": target.get("class") or "unknown",
                "Region": target.get("region") or "unknown",
                "Layer": f"{self.report['layer']} (the CAM methods)" if self.report.get("layer") else "none (the methods read the input)",
                "Device": self.report.get("device") or ""}


def read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SegXAIError(f"cannot read the report {path}: {error}; rerun segxai explain") from None
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict):
        raise SegXAIError(f"{path} is not a segxai explain report (no 'methods'); rerun segxai explain")
    return report


def report_places(root: Path) -> list:
    """``(folder, report)`` of every report: those in ``root``, else those in its sub-folders (segxai batch writes
    ``OUT/<case>/``; hidden sub-folders are unfinished ones). A sub-folder symlinked from elsewhere is refused."""
    places = [(root, path) for path in sorted(root.glob(f"*{REPORT_SUFFIX}"))]
    if not places:
        for sub in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            base = inside(root, sub.name)
            places += [(base, path) for path in sorted(base.glob(f"*{REPORT_SUFFIX}"))]
    return places


def find_cases(folder, ct: Optional[str] = None) -> list:
    """Every case of ``folder`` (sorted by stem); a SegXAIError when the folder holds none."""
    root = Path(folder)
    if not root.is_dir():
        raise SegXAIError(f"{folder} is not a folder; give the folder segxai explain wrote (-o)")
    root = root.resolve()
    cases = []
    for base, report_path in report_places(root):
        inside(base, report_path.name)  # a report symlinked from elsewhere is refused too
        stem = report_path.name[: -len(REPORT_SUFFIX)]
        report = read_report(report_path)
        cls = str((report.get("target") or {}).get("class") or "").replace(" ", "-")
        maps, notes = {}, []
        for method in report["methods"]:
            name = f"{stem}_{method}_{cls}.nrrd"
            path = inside(base, name)
            if path.is_file():
                maps[str(method)] = path
            else:
                notes.append(f"map {name} is missing")
        labels = inside(base, f"{stem}_labels.nii.gz")
        segmentation = inside(base, f"{stem}.seg.nrrd")
        cases.append(Case(stem, report, maps, labels if labels.is_file() else None,
                          segmentation if segmentation.is_file() else None, find_ct(base, stem, report, ct), notes,
                          base.name if base != root else ""))
    if not cases:
        raise SegXAIError(f"{folder} holds no *{REPORT_SUFFIX} (nor do its sub-folders); give the folder segxai "
                          f"explain or segxai batch wrote (-o)")
    return cases


def find_ct(root: Path, stem: str, report: dict, given: Optional[str]) -> Optional[Path]:
    """The CT the maps explain: ``--ct``, else ``<stem>.nii.gz`` … inside the folder, else the report's input."""
    if given:
        return Path(given)
    for suffix in CT_SUFFIXES:
        path = inside(root, stem + suffix)
        if path.is_file():
            return path
    source = report.get("input")
    return Path(source) if source and Path(source).exists() else None


def segment_classes(case: Case) -> list:
    """The classes of the case's segmentation (label value and name, from the .seg.nrrd header)."""
    from ..models.card import ClassInfo

    if case.segmentation is None:
        return []
    import slicerio

    seg = slicerio.read_segmentation(str(case.segmentation), skip_voxels=True)
    out = [ClassInfo(0, "background")]
    for segment in seg.get("segments", []):
        out.append(ClassInfo.known(int(segment["labelValue"]), str(segment.get("name") or segment["id"])))
    return out


def folder_digest(folder) -> dict:
    """{relative path: (size, mtime_ns, sha256)} of every file under ``folder`` (to prove a session wrote nothing)."""
    import hashlib

    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out
