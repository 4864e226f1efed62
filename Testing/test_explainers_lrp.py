"""LRP: conservation through skip additions, concatenations, strided and transposed convs; the ε rule
equals gradient × input on a bias-free ReLU net; instance norm handled; other architectures refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from SegXAILib.errors import SegXAIError
from SegXAILib.explainers.lrp import LRP, conservation_error
from SegXAILib.models.unet import residual_unet

torch.set_num_threads(1)


class TinyUNet(nn.Module):
    """Bias-free: strided conv down, transposed conv up, a skip addition and a concatenation, PReLU/ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.act0 = nn.ReLU()
        self.down = nn.Conv3d(4, 8, 3, stride=2, padding=1, bias=False)
        self.act1 = nn.PReLU()
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2, bias=False)
        self.act2 = nn.ReLU()
        self.head = nn.Conv3d(8, 3, 1, bias=False)

    def forward(self, x):
        e = self.act0(self.enc(x))
        u = self.act2(self.up(self.act1(self.down(e))) + e)  # skip addition
        return self.head(torch.cat([u, e], dim=1))  # skip concatenation


def weights(shape):
    w = torch.zeros(1, *shape)
    w[:, 2:6, 1:7, 3:8] = 1
    return w


def test_epsilon_rule_conserves_relevance():
    torch.manual_seed(0)
    net = TinyUNet().eval()
    x = torch.rand(1, 1, 8, 8, 10)
    result = LRP("epsilon", epsilon=1e-9).attribute(net, x, 1, weights((8, 8, 10)))
    err = conservation_error(result.totals)
    print("LRP-ε conservation error, bias-free tiny U-Net:", err)
    assert abs(result.totals["score"]) > 1e-3
    assert err < 1e-4


def test_epsilon_rule_is_gradient_times_input_on_relu_net():
    torch.manual_seed(1)
    net = TinyUNet().eval()
    x = torch.rand(1, 1, 8, 8, 10, requires_grad=True)
    w = weights((8, 8, 10))
    (grad,) = torch.autograd.grad((net(x)[:, 2] * w).sum(), x)
    ours = LRP("epsilon", epsilon=1e-12).attribute(net, x.detach(), 2, w).maps
    torch.testing.assert_close(ours, (x * grad).detach()[:, 0], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (2.0, 1.0)])
def test_alphabeta_rule_matches_explicit_formula(alpha, beta):
    # one 1×1×1 convolution = a matrix per voxel, with mixed-sign inputs: R_i = Σ_j (α (a_i w_ji)⁺/z⁺_j − β (a_i w_ji)⁻/z⁻_j) R_j
    torch.manual_seed(3)
    layer = nn.Conv3d(3, 2, 1, bias=False)
    net = nn.Sequential(layer).eval()
    x = torch.randn(1, 3, 2, 3, 4, dtype=torch.float64)
    layer.double()
    w = torch.ones(1, 2, 3, 4, dtype=torch.float64)
    cls = 1
    ours = LRP("alphabeta", epsilon=1e-12, alpha=alpha, beta=beta).attribute(net, x, cls, w).maps  # channel 0 of x
    W = layer.weight.detach()[:, :, 0, 0, 0]  # (out, in)
    contrib = W[cls][:, None, None, None] * x[0]  # (in, K, J, I): a_i w_ji for the target output j
    zp, zn = contrib.clamp(min=0).sum(0), contrib.clamp(max=0).sum(0)
    relevance = (contrib.sum(0))  # R_j = z_j (only class ``cls`` carries relevance)
    expected = torch.nan_to_num(alpha * contrib.clamp(min=0) / zp * relevance) - torch.nan_to_num(beta * contrib.clamp(max=0) / zn * relevance)
    torch.testing.assert_close(ours[0], expected[0], rtol=1e-6, atol=1e-9)


def test_alphabeta_differs_from_epsilon_and_checks_parameters():
    torch.manual_seed(2)
    net = TinyUNet().eval()
    x = torch.rand(1, 1, 8, 8, 10)
    w = weights((8, 8, 10))
    ab = LRP("alphabeta", alpha=2.0, beta=1.0).attribute(net, x, 0, w)
    eps = LRP("epsilon").attribute(net, x, 0, w)
    assert torch.isfinite(ab.maps).all() and not torch.allclose(ab.maps, eps.maps)
    with pytest.raises(SegXAIError):
        LRP("alphabeta", alpha=1.0, beta=1.0)


def test_residual_unet_with_instance_norm_runs_and_reports_conservation():
    torch.manual_seed(0)
    net = residual_unet(1, 3, channels=(4, 8, 16), strides=(2, 2)).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    result = LRP().attribute(net, x, 1, weights((16, 16, 16)))
    err = conservation_error(result.totals)
    print("LRP-ε conservation error, residual U-Net with instance norm (biases and norm shifts absorb):", err)
    assert torch.isfinite(result.maps).all() and float(result.maps.abs().max()) > 0
    assert err == err  # a number, reported (not zero: biases and norm shifts take relevance)
    # hooks are removed: the network computes as before
    with torch.no_grad():
        before = net(x)
    LRP().attribute(net, x, 1, weights((16, 16, 16)))
    with torch.no_grad():
        assert torch.equal(net(x), before)


class TinyViT(nn.Module):
    """Bias-free voxel tokens → MONAI self-attention (+ skip) → Linear → GELU → Linear → per-token class logits."""

    def __init__(self, hidden=8, classes=3) -> None:
        super().__init__()
        from monai.networks.blocks.selfattention import SABlock

        self.embed = nn.Linear(1, hidden, bias=False)
        self.attn = SABlock(hidden, num_heads=2, qkv_bias=False)
        nn.init.zeros_(self.attn.out_proj.bias)
        self.fc1, self.act, self.fc2 = nn.Linear(hidden, 16, bias=False), nn.GELU(), nn.Linear(16, classes, bias=False)

    def forward(self, x):  # x: (B, 1, d, h, w) → (B, classes, d, h, w)
        b, c, *grid = x.shape
        t = self.embed(x.flatten(2).transpose(1, 2))
        t = t + self.attn(t)
        return self.fc2(self.act(self.fc1(t))).transpose(1, 2).reshape(b, -1, *grid)


def test_transformer_lrp_conserves_relevance_through_attention_and_gelu():
    torch.manual_seed(0)
    net = TinyViT().eval()
    x = torch.randn(1, 1, 3, 4, 5)
    w = torch.zeros(1, 3, 4, 5)
    w[:, 1:, :2] = 1
    result = LRP("epsilon", epsilon=1e-12).attribute(net, x, 1, w)
    err = conservation_error(result.totals)
    print("LRP-ε conservation error, bias-free tiny ViT:", err)
    assert err < 1e-4
    # plain gradient × input of the same network with its attention frozen is not conservative (GELU is
    # not positively homogeneous): the identity rule for the gate is what makes the difference
    from SegXAILib.explainers.lrp import _attention_with_constant_weights

    handle = net.attn.register_forward_hook(lambda m, i, o: _attention_with_constant_weights(m, i[0]))
    try:
        xg = x.clone().requires_grad_(True)
        score = (net(xg)[:, 1] * w).sum()
        (g,) = torch.autograd.grad(score, xg)
    finally:
        handle.remove()
    plain = float((x * g).sum())
    assert abs(plain - float(score.detach())) / abs(float(score.detach())) > 100 * err


def test_transunet_runs_with_reported_conservation_and_removes_its_hooks():
    from SegXAILib.models.transunet import TransUNet3D

    torch.manual_seed(0)
    net = TransUNet3D(1, 3, img_size=(16, 16, 16), channels=(4, 8), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    result = LRP().attribute(net, x, 1, weights((16, 16, 16)))
    print("LRP-ε conservation error, tiny TransUNet (biases, norm shifts and position embeddings absorb):",
          conservation_error(result.totals))
    assert torch.isfinite(result.maps).all() and float(result.maps.abs().max()) > 0
    with torch.no_grad():
        before = net(x)
    LRP().attribute(net, x, 1, weights((16, 16, 16)))
    with torch.no_grad():
        assert torch.equal(net(x), before)


def test_a_layer_without_a_rule_is_refused_by_name():
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv3d(2, 3, 1))
    with pytest.raises(SegXAIError, match=r"no rule for layer '1' \(Tanh\)"):
        LRP().attribute(net.eval(), torch.rand(1, 1, 8, 8, 8), 1, torch.ones(1, 8, 8, 8))
