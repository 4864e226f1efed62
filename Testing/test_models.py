"""Both architectures: output shapes, safetensors and TorchScript loading, cards, and broken model files."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_card, tiny_model_folder
from SegXAILib.errors import SegXAIError
from SegXAILib.models.card import ModelCard
from SegXAILib.models.store import build_network, load_model
from SegXAILib.models.transunet import TransUNet3D
from SegXAILib.models.unet import residual_unet


@pytest.mark.parametrize("architecture", ["residual_unet", "transunet3d"])
def test_output_has_one_channel_per_class_at_input_size(architecture):
    card = tiny_card(architecture, classes=("liver", "spleen", "stomach"), patch=(16, 32, 24) if architecture == "residual_unet" else (16, 16, 16))
    net = build_network(card).eval()
    x = torch.randn(2, 1, *card.patch)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 4, *card.patch)


def test_product_sized_networks_fit_the_size_budget():
    unet = residual_unet(out_channels=8)
    tu = TransUNet3D(out_channels=8, img_size=(96, 96, 96), hidden_size=256, num_layers=6, num_heads=8, mlp_dim=1024)
    for net in (unet, tu):
        megabytes = sum(p.numel() for p in net.parameters()) * 4 / 2**20
        assert megabytes < 30, megabytes
    assert tu.token_grid == (6, 6, 6) and len(tu.blocks) == 6
    with torch.no_grad():
        assert tu(torch.zeros(1, 1, 96, 96, 96)).shape == (1, 8, 96, 96, 96)


def test_transunet_refuses_sizes_its_tokens_cannot_tile():
    with pytest.raises(ValueError, match="divisible"):
        TransUNet3D(img_size=(90, 96, 96))


@pytest.mark.parametrize("architecture", ["residual_unet", "transunet3d"])
def test_saved_model_loads_back_identically(tmp_path, architecture):
    folder = tiny_model_folder(tmp_path / "m", architecture)
    assert (folder / "model.safetensors").exists()
    a, b = load_model(folder), load_model(folder / "card.json")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(a.network(x), b.network(x))
    assert a.card.class_named("Liver").snomed_code == "10200004"
    assert a.card.to_json() == ModelCard.load(folder / "card.json").to_json()


def test_torchscript_model_with_a_card_loads(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    eager = load_model(folder)
    scripted = torch.jit.trace(eager.network, torch.zeros(1, 1, 16, 16, 16))
    scripted.save(str(folder / "model.ts"))
    card = json.loads((folder / "card.json").read_text())
    card.update(architecture="torchscript", weights="model.ts")
    (folder / "card.json").write_text(json.dumps(card))
    ts = load_model(folder)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ts.network(x), eager.network(x), atol=1e-5)


def test_corrupt_weights_are_a_clear_error(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(SegXAIError, match="corrupt"):
        load_model(folder)


def test_weights_that_do_not_match_the_card(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    card = json.loads((folder / "card.json").read_text())
    card["classes"].append({"value": 3, "name": "stomach"})  # the weights still have 3 output channels
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(SegXAIError, match="does not fit"):
        load_model(folder)


def test_bad_cards(tmp_path):
    folder = tiny_model_folder(tmp_path / "m")
    (folder / "card.json").write_text("{not json")
    with pytest.raises(SegXAIError, match="not valid JSON"):
        load_model(folder)
    (folder / "card.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SegXAIError, match="not a valid SegXAI model card"):
        load_model(folder)
    with pytest.raises(SegXAIError, match="no model"):
        load_model(tmp_path / "nowhere")
