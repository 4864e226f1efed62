"""Explainable layers, the default layer from the card, and the warning a silent CAM gets."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from SegXAILib.explainers import default_layer, make_explainer
from SegXAILib.explainers.tiling import explain_tiled
from SegXAILib.explaining import cam_warnings
from SegXAILib.layers import explainable_layers
from SegXAILib.models.store import build_network

from helpers import tiny_card

torch.set_num_threads(1)


def test_every_listed_layer_has_the_grid_a_real_forward_gives_and_can_be_explained():
    card = tiny_card("transunet3d")
    net = build_network(card).eval()
    layers = explainable_layers(net, card.patch)
    names = dict(net.named_modules())
    assert {"vit_out", "head"} <= {l.name for l in layers}
    shapes = {}
    hooks = [names[l.name].register_forward_hook(lambda m, i, o, n=l.name: shapes.__setitem__(n, tuple(o.shape)))
             for l in layers]
    with torch.no_grad():
        out = net(torch.rand(1, 1, *card.patch))
    for h in hooks:
        h.remove()
    image = np.random.default_rng(0).random(card.patch).astype(np.float32)
    region = np.zeros(card.patch, dtype=bool)
    region[4:12, 4:12, 4:12] = True
    for info in layers:
        shape = shapes[info.name]
        grid = shape[2:] if len(shape) == 5 else tuple(net.token_grid)  # ViT tokens fold back onto the token grid
        assert tuple(info.grid) == tuple(grid), info.name
        assert info.is_output == (shape == tuple(out.shape) and info.name == "head")
        cam, _ = explain_tiled(make_explainer("hirescam", layer=info.name), net, image, 1, region, card.patch, 0.5)
        assert cam.shape == image.shape and np.isfinite(cam).all()


def test_default_layer_comes_from_the_card_when_measured():
    card = tiny_card("residual_unet")
    net = build_network(card)
    assert default_layer(card.architecture, net, card) == "model.1.submodule.2"  # the architecture's constant
    card.extra["explanation"] = {"default_layer": "model.0", "alternatives": ["model.1"]}
    assert default_layer(card.architecture, net, card) == "model.0"
    card.extra["explanation"] = {"default_layer": "no.such.layer"}  # a card for another network: not used
    assert default_layer(card.architecture, net, card) == "model.1.submodule.2"


def test_a_cam_with_only_negative_channel_weights_is_reported_with_a_layer_that_works():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv3d(4, 2, 1)).eval()
    with torch.no_grad():
        net[4].weight.copy_(-net[4].weight.abs())  # class 1 falls wherever layer "3" is active
    image = np.random.default_rng(0).random((10, 10, 10)).astype(np.float32)
    region = np.ones(image.shape, dtype=bool)
    cam, totals = explain_tiled(make_explainer("gradcam", layer="3"), net, image, 1, region, (8, 8, 8), 0.5)
    assert np.count_nonzero(cam) == 0 and totals["negative_weights"] == totals["channels"] == 4
    card = tiny_card("residual_unet")
    card.extra["explanation"] = {"default_layer": "3", "alternatives": ["1"]}
    (warning,) = cam_warnings("gradcam", "3", totals, card, net)
    assert "negative" in warning and "--layer 1" in warning
    with torch.no_grad():
        net[4].weight.abs_()  # the control: class 1 now rises with the layer, so the same CAM speaks
    good, totals = explain_tiled(make_explainer("gradcam", layer="3"), net, image, 1, region, (8, 8, 8), 0.5)
    assert np.count_nonzero(good) > 0.5 * good.size and cam_warnings("gradcam", "3", totals, card, net) == []
