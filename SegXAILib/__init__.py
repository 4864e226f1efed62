"""SegXAILib: segment 3D CT and explain why, in the input's exact geometry.

Pure Python (torch, MONAI, numpy, SimpleITK). Nothing here imports ``slicer`` at import time;
only :mod:`SegXAILib.scene` does, lazily, when a Slicer scene is touched.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import SegXAIError, Cancelled  # noqa: E402,F401
