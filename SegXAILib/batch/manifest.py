"""The batch manifest: one JSON record per case under ``OUT/manifest/`` saying what was run (the input's hash, the
model, the parameters) and how it ended. A rerun skips a case whose record matches and redoes one that changed;
each record is written atomically after the case's outputs are in place, so a kill never records unfinished work.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from ..volume import write_json_atomic

MANIFEST_DIR = "manifest"


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder's files (a DICOM series) by relative name and content."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_fingerprint(model) -> dict:
    """The model's name and a hash of its folder's files (card and weights): a retrained model redoes the cases."""
    folder = Path(model.folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return {"name": model.card.name, "sha256": digest.hexdigest()}


def case_key(spec, params: dict, model: dict) -> dict:
    """What a case's result depends on: its files' hashes, the label meanings, the model and the parameters."""
    if not Path(spec.image).exists():
        raise FileNotFoundError(spec.image)
    return {"input_sha256": file_hash(spec.image),
            "reference_sha256": file_hash(spec.reference) if spec.reference and Path(spec.reference).exists() else None,
            "target": spec.target, "groups": spec.groups, "geometry": spec.geometry,
            "model": model, "params": params}


class Manifest:
    """The records under ``OUT/manifest/<case>.json``."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.folder = Path(out_dir) / MANIFEST_DIR

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> Optional[dict]:
        try:
            return json.loads(self.path(name).read_text())
        except (OSError, ValueError):
            return None

    def is_done(self, name: str, key: dict) -> bool:
        """True when the case finished with exactly this key (failed cases are always tried again)."""
        record = self.read(name)
        return bool(record) and record.get("status") == "done" and record.get("key") == json.loads(json.dumps(key))

    def write(self, record: dict) -> Path:
        return write_json_atomic(record, self.path(record["case"]), overwrite=True)
