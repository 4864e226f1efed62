"""Reading a pickled PyTorch checkpoint without running code from it: ``torch.load(weights_only=True)`` with an
explicit allowlist of the few plain types trainers write (numpy scalars and dtypes), and a refusal that names
what was found otherwise. Nothing outside the allowlist is ever imported or called.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

from ..errors import SegXAIError


def _allowlist() -> list:
    """numpy's scalar reconstructor and dtype classes, under both the numpy 1 and numpy 2 module names."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    allowed = [np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((scalar, f"{module}.scalar"))
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            allowed.append(cls)
    return allowed


def load_checkpoint(path: "str | Path") -> dict:
    """A checkpoint's contents (tensors, numbers, strings, lists, dicts, numpy scalars), never executing code.

    A pickle that asks for anything else (a class, a function such as ``os.system``) is refused with one line
    that names the global and the file.
    """
    import torch

    path = Path(path)
    if not hasattr(torch.serialization, "safe_globals"):
        raise SegXAIError(f"reading {path} safely needs PyTorch 2.5 or newer (torch.serialization.safe_globals); "
                          f"this is {torch.__version__}: update PyTorch")
    try:
        with torch.serialization.safe_globals(_allowlist()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(err))
        what = found.group(1) if found else " ".join(str(err).split())[:160]
        raise SegXAIError(f"refused to load {path}: it asks to import {what}, which is not a plain tensor, number or "
                          "numpy scalar; SegXAI never runs code from a model file (convert it to safetensors, or "
                          "load only checkpoints you trust with nnU-Net itself)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise SegXAIError(f"{path} is not a readable PyTorch checkpoint ({' '.join(str(err).split())[:160]})") from None
