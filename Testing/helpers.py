"""Small real models for tests: the product's architectures, shrunk so a CPU runs them in milliseconds."""
from __future__ import annotations

import torch

from SegXAILib.models.card import ClassInfo, ModelCard
from SegXAILib.models.store import build_network, save_model

TINY_ARGS = {
    "residual_unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "transunet3d": {"channels": [4, 8], "hidden_size": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 32},
}


def tiny_card(architecture: str = "residual_unet", classes=("liver", "spleen"), spacing=(4.0, 4.0, 4.0), patch=(16, 16, 16)) -> ModelCard:
    return ModelCard(
        name=f"tiny-{architecture}",
        architecture=architecture,
        classes=[ClassInfo(0, "background", [0, 0, 0])] + [ClassInfo.known(i + 1, n) for i, n in enumerate(classes)],
        spacing=list(spacing),
        window=[-200.0, 300.0],
        patch=list(patch),
        arch_args=dict(TINY_ARGS[architecture]),
        overlap=0.25,
        training={"cases": [{"id": "none", "source": "random weights for tests"}]},
    )


def tiny_model_folder(folder, architecture: str = "residual_unet", seed: int = 0, **card_kw):
    """Write a randomly initialised tiny model (card.json + model.safetensors) and return the folder."""
    torch.manual_seed(seed)
    card = tiny_card(architecture, **card_kw)
    return save_model(build_network(card), card, folder)


def import_pytorch_grad_cam():
    """pytorch-grad-cam imports torchvision for image helpers these tests do not use; only CUDA torchvision
    builds exist here, so a stand-in module satisfies those imports. The CAM formulas are pytorch-grad-cam's own."""
    import sys
    import types

    import pytest

    pytest.importorskip("cv2")
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:
            tv = types.ModuleType("torchvision")
            tv.transforms = types.ModuleType("torchvision.transforms")
            tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
            for name in ("Compose", "Normalize", "ToTensor"):
                setattr(tv.transforms, name, object)
            tv.transforms.functional.resize = None
            tv.ops = types.ModuleType("torchvision.ops")
            sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms,
                                "torchvision.transforms.functional": tv.transforms.functional, "torchvision.ops": tv.ops})
    return pytest.importorskip("pytorch_grad_cam")
