"""Model formats other than SegXAI's own cards, recognised by their files; each becomes a `LoadedModel` with its
format's own pre-processing, windows and inverse, so nothing downstream knows where a model came from."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def recognise(path: "str | os.PathLike | None") -> Optional[str]:
    """The format of the model at ``path`` other than a SegXAI card ('nnunetv2', 'monai-bundle'), or None."""
    if path is None or str(path) == "":
        return None
    path = Path(path)
    if not path.is_dir() or (path / "card.json").is_file():
        return None
    from .nnunet import find_trained_model

    if find_trained_model(path) is not None:
        return "nnunetv2"
    from .monai_bundle import find_bundle

    if find_bundle(path) is not None:
        return "monai-bundle"
    return None


def load_foreign(path, device="cpu"):
    """The `LoadedModel` of a recognised foreign format at ``path``, or None when it is not one."""
    kind = recognise(path)
    if kind == "nnunetv2":
        from .nnunet import load_nnunet

        return load_nnunet(path, device)
    if kind == "monai-bundle":
        from .monai_bundle import load_bundle

        return load_bundle(path, device)
    return None
