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


def bn_net():
    """A small real conv net whose norm behaves alike in one pass and in windows (eval batch norm with set
    statistics), with a strided conv and its transpose: the tiled-equals-single-graph oracle tests' network."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.Conv3d(6, 6, 3, stride=2, padding=1),
                        nn.ReLU(), nn.ConvTranspose3d(6, 6, 2, stride=2), nn.ReLU(), nn.Conv3d(6, 3, 1))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def torchvision_standin() -> None:
    """A stand-in ``torchvision`` for the test oracles that import it for parts these tests never use
    (pytorch-grad-cam's image helpers, zennit's ResNet canonizers, quantus through zennit): only CUDA builds of
    torchvision exist, and installing one would replace the CPU torch. One stand-in for every test, completed
    if another is already there, never over the real package."""
    import sys
    import types

    from torch import nn

    tv = sys.modules.get("torchvision")
    if tv is None:
        try:
            import torchvision  # noqa: F401  (the real one, where it works)
            return
        except Exception:
            for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[name]
            tv = types.ModuleType("torchvision")
    elif getattr(tv, "__file__", None):
        return
    sys.modules["torchvision"] = tv

    def sub(parent, name):
        full = f"{parent.__name__}.{name}"
        module = sys.modules.get(full) or getattr(parent, name, None) or types.ModuleType(full)
        setattr(parent, name, module)
        sys.modules[full] = module
        return module

    transforms = sub(tv, "transforms")
    for name in ("Compose", "Normalize", "ToTensor"):
        if not hasattr(transforms, name):
            setattr(transforms, name, object)
    functional = sub(transforms, "functional")
    functional.resize = getattr(functional, "resize", None)
    ops = sub(tv, "ops")
    ops.box_iou = getattr(ops, "box_iou", None)
    resnet = sub(sub(tv, "models"), "resnet")
    for name in ("Bottleneck", "BasicBlock"):
        if not hasattr(resnet, name):
            setattr(resnet, name, type(name, (nn.Module,), {}))


def import_pytorch_grad_cam():
    """pytorch-grad-cam, its torchvision imports met by ``torchvision_standin``; the CAM formulas are its own."""
    import pytest

    pytest.importorskip("cv2")
    torchvision_standin()
    return pytest.importorskip("pytorch_grad_cam")


#: the synthetic organs of ``ringed_ct`` (array slices, K, J, I)
RINGED_LIVER = (slice(None), slice(14, 46), slice(10, 42))
RINGED_SPLEEN = (slice(None), slice(50, 66), slice(46, 66))


def ringed_ct():
    """(CT, labels, rng) for picture tests: rings and noise (so a veil or a tint cannot hide), a liver (1) and a
    spleen (2) box; the rng continues the CT's stream for the maps a test draws next."""
    import numpy as np

    from SegXAILib.volume import Volume

    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(np.arange(6), np.arange(80), np.arange(80), indexing="ij")
    ct = (60 * np.sin(np.hypot(j - 40, i - 40) / 3.0) + 40 + rng.normal(0, 15, (6, 80, 80))).astype(np.int16)
    m = np.diag([1.5, 1.5, 3.0, 1.0])
    m[:3, 3] = [-60.0, -60.0, -9.0]
    ct = Volume(ct, m)
    labels = np.zeros(ct.shape, np.uint8)
    labels[RINGED_LIVER], labels[RINGED_SPLEEN] = 1, 2
    return ct, labels, rng
