"""Networks (residual U-Net, 3D TransUNet), model cards, and loading/saving models.

Importing this package does not import torch (``store`` imports it where a network is built or loaded), so the
Slicer panel can list the bundled models before PyTorch is installed.
"""
from __future__ import annotations

from .card import ClassInfo, ModelCard  # noqa: F401
from .store import LoadedModel, build_network, load_model, save_model, bundled_models, default_model_name  # noqa: F401
