"""LRP against outside oracles: zennit's composites and rules on a 3D conv net (ReLU/LeakyReLU, eval BN, a skip
addition, a concatenation, a dense layer); the LayerNorm / InstanceNorm rule of Ali et al. (σ detached, centring
kept) against an explicit matrix computation; conservation where it must hold exactly; conservation bounds on the
bundled models (measured, see bench/lrp_conservation.py); bad parameters refused in one line."""
from __future__ import annotations

import copy
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers.lrp import INPUT_RULES, LRP, RULES, conservation_error, relevance_ledger
from SegXAILib.models.unet import residual_unet

torch.set_num_threads(1)


def _zennit():
    """zennit with a stand-in for torchvision: zennit imports it only for its torchvision canonizers (ResNet
    blocks), which these tests do not use; the real torchvision cannot be installed beside this CPU torch."""
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tv.models = types.ModuleType("torchvision.models")
        tv.models.resnet = types.ModuleType("torchvision.models.resnet")
        tv.models.resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        tv.models.resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        sys.modules.update({"torchvision": tv, "torchvision.models": tv.models, "torchvision.models.resnet": tv.models.resnet})
    return pytest.importorskip("zennit")


class ConvNet(nn.Module):
    """First conv (reads the input) → ReLU → strided conv → eval BN → LeakyReLU → transposed conv, + skip (addition)
    → ReLU → dense layer over channels → concatenation with the skip → 1×1 head. Biases everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv3d(1, 4, 3, padding=1)
        self.act0 = nn.ReLU()
        self.down = nn.Conv3d(4, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.act1 = nn.LeakyReLU(0.1)
        self.up = nn.ConvTranspose3d(6, 4, 2, stride=2)
        self.act2 = nn.ReLU()
        self.dense = nn.Linear(4, 4)
        self.head = nn.Conv3d(8, 3, 1)
        self.add = lambda a, b: a + b  # zennit needs its Sum module here (below); a plain addition for us

    def forward(self, x):
        e = self.act0(self.enc(x))
        u = self.act2(self.add(self.up(self.act1(self.bn(self.down(e)))), e))
        d = self.dense(u.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.head(torch.cat([d, e], dim=1))


def conv_net() -> ConvNet:
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():  # eval BN with non-trivial statistics and affine, so its shift is not zero
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
        for m in (net.enc, net.down, net.up, net.dense, net.head):
            m.bias.uniform_(-0.1, 0.1)
    return net.double().eval()


def problem():
    torch.manual_seed(1)
    x = torch.rand(1, 1, 6, 8, 8, dtype=torch.float64)
    x[..., :2, :] = 0.0  # air: exact zeros, which z^B and flat still credit
    w = torch.zeros(1, 6, 8, 8, dtype=torch.float64)
    w[:, 1:5, 2:7, 1:6] = 1.0
    return x, w


def zennit_relevance(net, x, w, cls, composite):
    _zennit()
    from zennit.attribution import Gradient
    from zennit.layer import Sum

    net = copy.deepcopy(net)
    net.sum = Sum()
    net.add = lambda a, b: net.sum(torch.stack([a, b], dim=-1))

    def output_relevance(out):
        r = torch.zeros_like(out)
        r[:, cls] = out[:, cls] * w
        return r

    with Gradient(model=net, composite=composite) as attributor:
        _, relevance = attributor(x, output_relevance)
    return relevance[:, 0]


def zennit_composite(rule, input_rule):
    """zennit's composite for our (rule, input_rule): its rule for convolutions, dense layers and the first layer."""
    _zennit()
    from zennit import rules as zr
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.types import Convolution

    conv, dense, first = {
        ("composite", "zbox"): (zr.Gamma(0.25), zr.Epsilon(1e-6), zr.ZBox(0.0, 1.0)),  # = EpsilonGammaBox
        ("composite", "flat"): (zr.Gamma(0.25), zr.Epsilon(1e-6), zr.Flat()),
        ("composite-zplus", "flat"): (zr.ZPlus(), zr.Epsilon(1e-6), zr.Flat()),  # = EpsilonPlusFlat
        ("composite-zplus", "zbox"): (zr.ZPlus(), zr.Epsilon(1e-6), zr.ZBox(0.0, 1.0)),
        ("epsilon", "zbox"): (zr.Epsilon(1e-6), zr.Epsilon(1e-6), zr.Epsilon(1e-6)),  # input_rule unused
        ("alphabeta", "zbox"): (zr.AlphaBeta(2.0, 1.0), zr.AlphaBeta(2.0, 1.0), zr.AlphaBeta(2.0, 1.0)),
    }[(rule, input_rule)]
    # eval BN: ε rule on its affine map, as ours (zennit's default for an unmerged BN passes relevance unchanged)
    layer_map = [(nn.BatchNorm3d, zr.Epsilon(1e-6))] + layer_map_base() + [(Convolution, conv), (nn.Linear, dense)]
    return SpecialFirstLayerMapComposite(layer_map, [(Convolution, first)])


@pytest.mark.parametrize("rule,input_rule", [("composite", "zbox"), ("composite", "flat"), ("composite-zplus", "flat"),
                                             ("composite-zplus", "zbox"), ("epsilon", "zbox"), ("alphabeta", "zbox")])
def test_relevance_matches_zennit(rule, input_rule):
    net, (x, w) = conv_net(), problem()
    expected = zennit_relevance(net, x, w, 1, zennit_composite(rule, input_rule))
    ours = LRP(rule, input_rule=input_rule).attribute(net, x, 1, w).maps
    assert float(expected.abs().max()) > 1e-3
    # zennit's Sum rule stabilises the skip addition by 1e-6; ours divides exactly: agreement to ~1e-6 of the scale
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("ours,theirs", [("composite", "EpsilonGammaBox"), ("composite-zplus", "EpsilonPlusFlat")])
def test_default_composites_are_zennits_named_composites(ours, theirs):
    zennit = _zennit()
    net, (x, w) = conv_net(), problem()
    net.bn = nn.Identity()  # zennit's named composites pass an unmerged BN unchanged; compare without one
    kwargs = {"low": 0.0, "high": 1.0} if theirs == "EpsilonGammaBox" else {}
    expected = zennit_relevance(net, x, w, 2, getattr(zennit.composites, theirs)(**kwargs))
    explainer = LRP(ours, input_rule="zbox" if theirs == "EpsilonGammaBox" else "flat")
    ours_map = explainer.attribute(net, x, 2, w).maps
    torch.testing.assert_close(ours_map, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
