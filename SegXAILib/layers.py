"""The layers of a network one can explain with a CAM: every block whose output maps onto the 3D grid.

Found by one forward pass of a zero window with hooks on every module (nothing is guessed from names):
a layer qualifies when its output is (B, C, d, h, w), or ViT tokens (B, N, C) the network folds back with
``tokens_to_grid``. Listed: the blocks a container (Sequential, ModuleList, MONAI's SkipConnection) holds;
the layers inside a block (its convolutions, norms, activations) only with ``every``. A wrapper that returns
a child's tensor unchanged says so (``same_as``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass
class LayerInfo:
    """One explainable layer: its name, module type, channels and grid at the model's patch."""

    name: str
    kind: str
    channels: int
    grid: tuple
    scale: float  # layer grid / patch, per axis (1 = full resolution)
    is_output: bool = False  # the network's output itself (its CAM would be the prediction again)
    same_as: str = ""  # the first listed layer with the very same output tensor

    def describe(self) -> str:
        res = "full" if self.scale >= 1 else f"1/{round(1 / self.scale)}"
        note = " (the network's output)" if self.is_output else (f" (same output as {self.same_as})" if self.same_as else "")
        return f"{self.name:<28} {self.kind:<18} {self.channels:>4} ch {'x'.join(map(str, self.grid)):>10}  {res} res{note}"


def explainable_layers(network: nn.Module, patch: Sequence[int], every: bool = False) -> list:
    """Every explainable layer of ``network`` for windows of shape ``patch``, in forward order."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)  # exact types: MONAI's blocks subclass Sequential
    modules = dict(network.named_modules())
    def listed(name: str) -> bool:
        parent = name.rpartition(".")[0]
        kind = type(modules[parent])
        return every or parent == "" or kind in containers or kind.__name__ == "SkipConnection"

    names = [n for n in modules if n and listed(n)]
    outputs: dict = {}

    def hook(name):
        def record(module, inputs, output):
            outputs[name] = output[0] if isinstance(output, (tuple, list)) else output
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = network(torch.zeros((1, 1, *[int(p) for p in patch]), device=device))
    finally:
        for h in handles:
            h.remove()
    token_grid = getattr(network, "token_grid", None)
    n_tokens = int(torch.tensor(token_grid).prod()) if token_grid is not None else -1
    layers, first = [], {}
    for name in names:  # named_modules order: parents before children, blocks in definition order
        t = outputs.get(name)
        if not torch.is_tensor(t):
            continue
        shape = tuple(t.shape)
        if len(shape) == 5:
            grid, channels = shape[2:], shape[1]
        elif len(shape) == 3 and shape[1] == n_tokens:
            grid, channels = tuple(token_grid), shape[2]
        else:
            continue
        same = first.setdefault((t.data_ptr(), shape), name)
        layers.append(LayerInfo(name, type(modules[name]).__name__, int(channels), tuple(int(g) for g in grid),
                                float(grid[0]) / float(patch[0]), t is out or shape == tuple(out.shape) and
                                bool(torch.equal(t, out)), "" if same == name else same))
    outputs.clear()
    return layers
