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
    """zennit, with ``helpers.torchvision_standin`` for the torchvision canonizers (ResNet blocks) it imports and
    these tests do not use; the real torchvision cannot be installed beside this CPU torch."""
    from helpers import torchvision_standin

    torchvision_standin()
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


#: zennit stabilises its Sum (skip addition) rule; ours divides exactly, so zennit's is set to a negligible 1e-30
SUM_STABILIZER = 1e-30


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
    layer_map = [(nn.BatchNorm3d, zr.Epsilon(1e-6))] + layer_map_base(SUM_STABILIZER) + [(Convolution, conv), (nn.Linear, dense)]
    return SpecialFirstLayerMapComposite(layer_map, [(Convolution, first)])


@pytest.mark.parametrize("rule,input_rule", [("composite", "zbox"), ("composite", "flat"), ("composite-zplus", "flat"),
                                             ("composite-zplus", "zbox"), ("epsilon", "zbox"), ("alphabeta", "zbox")])
def test_relevance_matches_zennit(rule, input_rule):
    net, (x, w) = conv_net(), problem()
    expected = zennit_relevance(net, x, w, 1, zennit_composite(rule, input_rule))
    ours = LRP(rule, input_rule=input_rule).attribute(net, x, 1, w).maps
    assert float(expected.abs().max()) > 1e-3
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))


@pytest.mark.parametrize("ours,theirs", [("composite", "EpsilonGammaBox"), ("composite-zplus", "EpsilonPlusFlat")])
def test_default_composites_are_zennits_named_composites(ours, theirs):
    zennit = _zennit()
    net, (x, w) = conv_net(), problem()
    net.bn = nn.Identity()  # zennit's named composites pass an unmerged BN unchanged; compare without one
    from zennit.layer import Sum
    from zennit.rules import Norm

    kwargs = {"low": 0.0, "high": 1.0} if theirs == "EpsilonGammaBox" else {}
    kwargs["layer_map"] = [(Sum, Norm(SUM_STABILIZER))]  # prepended: overrides only the Sum's stabiliser
    expected = zennit_relevance(net, x, w, 2, getattr(zennit.composites, theirs)(**kwargs))
    explainer = LRP(ours, input_rule="zbox" if theirs == "EpsilonGammaBox" else "flat")
    ours_map = explainer.attribute(net, x, 2, w).maps
    assert float(expected.abs().max()) > 1e-3
    torch.testing.assert_close(ours_map, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max()))


# ---- norms: Ali et al.'s rule (σ detached, centring kept) against an explicit matrix computation -------------
def _stab(z, eps=1e-6):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def explicit_lrp(chain, x, output_relevance_mask):
    """LRP-ε (ε = 1e-6) through a chain of affine maps z = M a + c written out as full matrices (float64):
    R_a = a ⊙ Mᵀ (R_z / (z ± ε)); the output relevance is z ⊙ mask."""
    acts = [x]
    for m, c in chain:
        acts.append(m @ acts[-1] + c)
    relevance = acts[-1] * output_relevance_mask
    for (m, _), a, z in reversed(list(zip(chain, acts[:-1], acts[1:]))):
        relevance = a * (m.T @ (relevance / _stab(z)))
    return relevance, float((acts[-1] * output_relevance_mask).sum())


def centring_norm_matrix(z_groups, gamma, eps, freeze_mean=False):
    """Per group (token or channel): diag(γ/σ)(I − 11ᵀ/n), σ from the group's values (Ali et al.'s σ-detached map);
    with ``freeze_mean`` the mean becomes a constant shift instead (the rule this replaced)."""
    blocks, shifts = [], []
    for z, g in zip(z_groups, gamma):
        n = z.size
        sigma = np.sqrt(z.var() + eps)
        centre = np.eye(n) if freeze_mean else np.eye(n) - np.ones((n, n)) / n
        blocks.append(np.diag(np.broadcast_to(g, (n,)) / sigma) @ centre)
        shifts.append(-z.mean() * np.broadcast_to(g, (n,)) / sigma if freeze_mean else np.zeros(n))
    size = sum(b.shape[0] for b in blocks)
    m, at = np.zeros((size, size)), 0
    for b in blocks:
        m[at:at + b.shape[0], at:at + b.shape[0]] = b
        at += b.shape[0]
    return m, np.concatenate(shifts)


class TokenToy(nn.Module):
    """Linear → LayerNorm → Linear over T tokens; input (1, 1, T, 1, d_in), logits (1, classes, T, 1, 1)."""

    def __init__(self, d_in=4, hidden=5, classes=3, bias=True) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(d_in, hidden, bias=bias), nn.LayerNorm(hidden, elementwise_affine=bias), nn.Linear(hidden, classes, bias=bias)
        if bias:
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        t = x[:, 0, :, 0, :]  # (1, T, d_in)
        return self.fc2(self.norm(self.fc1(t))).permute(0, 2, 1)[..., None, None]


def token_oracle(net, x, cls, w_tokens, freeze_mean=False):
    tokens, d_in = x.shape[2], x.shape[4]
    W1, W2 = net.fc1.weight.detach().numpy(), net.fc2.weight.detach().numpy()
    b1 = net.fc1.bias.detach().numpy() if net.fc1.bias is not None else np.zeros(W1.shape[0])
    b2 = net.fc2.bias.detach().numpy() if net.fc2.bias is not None else np.zeros(W2.shape[0])
    ln_g = net.norm.weight.detach().numpy() if net.norm.weight is not None else np.ones(W1.shape[0])
    ln_b = net.norm.bias.detach().numpy() if net.norm.bias is not None else np.zeros(W1.shape[0])
    a0 = x.numpy().reshape(tokens * d_in)
    z1 = np.kron(np.eye(tokens), W1) @ a0 + np.tile(b1, tokens)
    m_ln, shift = centring_norm_matrix(z1.reshape(tokens, -1), [ln_g] * tokens, net.norm.eps, freeze_mean)
    mask = np.zeros((tokens, W2.shape[0]))
    mask[:, cls] = w_tokens
    chain = [(np.kron(np.eye(tokens), W1), np.tile(b1, tokens)), (m_ln, shift + np.tile(ln_b, tokens)),
             (np.kron(np.eye(tokens), W2), np.tile(b2, tokens))]
    relevance, score = explicit_lrp(chain, a0, mask.ravel())
    return relevance.reshape(1, tokens, 1, d_in), score


def test_layernorm_rule_is_ali_et_al_explicit_matrix_form():
    torch.manual_seed(4)
    net = TokenToy().double().eval()
    x = torch.randn(1, 1, 3, 1, 4, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    expected, score = token_oracle(net, x, 1, w.numpy().ravel())
    result = LRP("composite").attribute(net, x, 1, w)  # Linear layers: ε; LayerNorm: σ detached
    np.testing.assert_allclose(result.maps.numpy(), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())
    assert result.totals["score"] == pytest.approx(score, rel=1e-12)
    frozen, _ = token_oracle(net, x, 1, w.numpy().ravel(), freeze_mean=True)
    assert np.abs(frozen - expected).max() > 1e-2 * np.abs(expected).max()  # the frozen-μ rule is measurably different


def test_layernorm_rule_conserves_where_frozen_mean_does_not():
    torch.manual_seed(5)
    net = TokenToy(bias=False).double().eval()  # no biases, no β: relevance has nowhere to go
    x = torch.randn(1, 1, 4, 1, 4, dtype=torch.float64)
    w = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    err = conservation_error(LRP("composite", epsilon=1e-9).attribute(net, x, 2, w).totals)
    frozen, score = token_oracle(net, x, 2, np.ones(4), freeze_mean=True)
    frozen_err = abs(frozen.sum() - score) / abs(score)
    print(f"LayerNorm toy conservation: σ detached {err:.2g}, μ frozen too {frozen_err:.2g}")
    assert err < 1e-6 and frozen_err > 1e-2  # σ detached: exact up to the norm's 1e-6 stabiliser


class ChannelToy(nn.Module):
    """1×1 conv → InstanceNorm (affine) → 1×1 conv: per voxel a matrix, the norm per channel over space."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.norm, self.c2 = nn.Conv3d(1, 3, 1), nn.InstanceNorm3d(3, affine=True), nn.Conv3d(3, 2, 1)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        return self.c2(self.norm(self.c1(x)))


def test_instance_norm_rule_is_the_same_sigma_detached_map():
    torch.manual_seed(6)
    net = ChannelToy().double().eval()
    x = torch.rand(1, 1, 2, 2, 3, dtype=torch.float64)
    w = torch.rand(1, 2, 2, 3, dtype=torch.float64)
    v = x[0, 0].numel()
    W1, b1 = net.c1.weight.detach().numpy()[:, :, 0, 0, 0], net.c1.bias.detach().numpy()
    W2, b2 = net.c2.weight.detach().numpy()[:, :, 0, 0, 0], net.c2.bias.detach().numpy()
    a0 = x.numpy().reshape(v)  # channel-major flattening: (C, V)
    z1 = np.kron(W1, np.eye(v)) @ a0 + np.repeat(b1, v)
    m_in, _ = centring_norm_matrix(z1.reshape(3, v), net.norm.weight.detach().numpy(), net.norm.eps)
    mask = np.zeros((2, v))
    mask[0] = w.numpy().ravel()
    chain = [(np.kron(W1, np.eye(v)), np.repeat(b1, v)), (m_in, np.repeat(net.norm.bias.detach().numpy(), v)),
             (np.kron(W2, np.eye(v)), np.repeat(b2, v))]
    expected, _ = explicit_lrp(chain, a0, mask.ravel())
    ours = LRP("epsilon").attribute(net, x, 0, w).maps.numpy().reshape(v)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max())


# ---- conservation where it must hold, and where relevance goes where it does not ------------------------------
def bias_free_conv_net():
    net = conv_net()
    net.bn = nn.Identity()
    with torch.no_grad():
        for m in (net.enc, net.down, net.up, net.dense, net.head):
            m.bias.zero_()
    return net


@pytest.mark.parametrize("rule,input_rule,bound", [("composite", "zbox", 1e-4), ("composite", "flat", 1e-4),
                                                   ("composite-zplus", "zbox", 1e-3), ("epsilon", "zbox", 1e-4)])
def test_every_rule_conserves_on_a_bias_free_net(rule, input_rule, bound):
    # no bias, no norm shift: each rule's denominators are what it distributes, up to the 1e-6 stabilisers at
    # near-zero outputs (measured 3e-5 here; z⁺ also drops outputs with no positive contribution, 4e-4).
    # αβ is left out: it conserves only where an output has both positive and negative contributions.
    net, (x, w) = bias_free_conv_net(), problem()
    result = LRP(rule, input_rule=input_rule).attribute(net, x, 1, w)
    assert abs(result.totals["score"]) > 1e-2
    assert conservation_error(result.totals) < bound


def test_epsilon_rule_is_gradient_times_input_on_bias_free_relu_net():
    net, (x, w) = bias_free_conv_net(), problem()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((net(xg)[:, 2] * w).sum(), xg)
    ours = LRP("epsilon", epsilon=1e-12).attribute(net, x, 2, w).maps
    torch.testing.assert_close(ours, (x * grad).detach()[:, 0], rtol=1e-6, atol=1e-9)


def test_residual_unet_with_instance_norm_conserves_when_its_only_shifts_are_gone():
    # MONAI's residual U-Net, every conv bias zeroed: instance norms (no affine) are then the only place a frozen
    # mean could absorb relevance; with the centring in the graph the ε rule conserves up to the norms'
    # 1e-6 stabiliser (measured 4e-6)
    torch.manual_seed(0)
    net = residual_unet(1, 3, channels=(4, 8, 16), strides=(2, 2)).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) and m.bias is not None:
                m.bias.zero_()
    x = torch.rand(1, 1, 16, 16, 16, dtype=torch.float64)
    w = torch.zeros(1, 16, 16, 16, dtype=torch.float64)
    w[:, 4:12, 2:10, 5:14] = 1
    result = LRP("epsilon", epsilon=1e-9).attribute(net, x, 1, w)
    assert abs(result.totals["score"]) > 1e-2
    assert conservation_error(result.totals) < 2e-5
    with torch.no_grad():  # hooks are removed: the network computes as before
        before = net(x)
    LRP().attribute(net, x, 1, w)
    with torch.no_grad():
        assert torch.equal(net(x), before)


@pytest.mark.parametrize("rule", RULES)
def test_ledger_accounts_for_all_lost_relevance(rule):
    # with biases and a norm with running statistics, ΣR_input ≠ F; what each layer absorbed (recorded in the
    # backward pass) closes the gap to F from the forward pass: no relevance leaks unaccounted
    net, (x, w) = conv_net(), problem()
    explainer = LRP(rule)
    result = explainer.attribute(net, x, 1, w)
    absorbed = relevance_ledger(explainer)
    assert {"enc", "down", "bn", "up", "dense", "head"} <= set(absorbed)
    gap = result.totals["score"] - result.totals["relevance_sum"]
    assert abs(gap) > 1e-3  # biases and the BN shift do take relevance here
    assert sum(absorbed.values()) == pytest.approx(gap, rel=1e-9, abs=1e-12)


# ---- transformers ------------------------------------------------------------------------------------------------
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
    result = LRP("composite", epsilon=1e-12).attribute(net, x, 1, w)
    err = conservation_error(result.totals)
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


def test_transunet_removes_its_hooks():
    from SegXAILib.models.transunet import TransUNet3D

    torch.manual_seed(0)
    net = TransUNet3D(1, 3, img_size=(16, 16, 16), channels=(4, 8), hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    w = torch.ones(1, 16, 16, 16)
    with torch.no_grad():
        before = net(x)
    result = LRP().attribute(net, x, 1, w)
    assert torch.isfinite(result.maps).all() and float(result.maps.abs().max()) > 0
    with torch.no_grad():
        assert torch.equal(net(x), before)


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_a_layer_without_a_rule_is_refused_by_name():
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv3d(2, 3, 1))
    with pytest.raises(SegXAIError, match=r"no rule for layer '1' \(Tanh\)"):
        LRP().attribute(net.eval(), torch.rand(1, 1, 8, 8, 8), 1, torch.ones(1, 8, 8, 8))


@pytest.mark.parametrize("kwargs,match", [({"rule": "z+"}, "unknown LRP rule"), ({"input_rule": "box"}, "unknown LRP input rule"),
                                          ({"epsilon": 0}, "epsilon"), ({"gamma": -1}, "gamma"), ({"epsilon": "a"}, "epsilon"),
                                          ({"alpha": 1.0, "beta": 1.0}, "α − β = 1"), ({"low": 1.0, "high": 0.0}, "low < high"),
                                          ({"high": float("nan")}, "high")])
def test_bad_parameters_are_one_line_errors(kwargs, match):
    with pytest.raises(SegXAIError, match=match) as err:
        LRP(**kwargs)
    assert "\n" not in str(err.value)


def test_params_report_every_parameter():
    assert LRP().params() == {"rule": "composite", "epsilon": 1e-6, "gamma": 0.25, "alpha": 2.0, "beta": 1.0,
                              "input_rule": "zbox", "low": 0.0, "high": 1.0}
    assert LRP("epsilon").params()["input_rule"] == "epsilon"  # outside the composites the input layer gets the rule
    assert set(INPUT_RULES) == {"zbox", "flat"}


# ---- the bundled models on a real window of the bundled sample (bounds from bench/lrp_conservation.py) -------------
def real_window(model_name: str, size: int):
    """A ``size``³ window of the bundled sample on the model grid around the liver the model predicts in a 96³ window,
    and the liver class weights there: the liver the model predicts in that window."""
    from SegXAILib.models.store import load_model, resources_dir
    from SegXAILib.volume import read_volume

    model = load_model(model_name)
    image = model.preprocessing(read_volume(resources_dir() / "Samples" / "ct_totalseg_A.nii.gz")).image
    context = torch.from_numpy(np.ascontiguousarray(image[8:104, 5:101, 13:109]))[None, None]  # lies on the liver
    with torch.no_grad():
        liver = model.network(context).argmax(1)[0] == 1
    centre = [int(c.float().mean()) for c in torch.nonzero(liver, as_tuple=True)]
    lo = [min(max(c - size // 2, 0), 96 - size) for c in centre]
    x = context[(slice(None), slice(None)) + tuple(slice(a, a + size) for a in lo)].contiguous()
    with torch.no_grad():
        return model.network, x, (model.network(x).argmax(1) == 1).float()


def test_bundled_resunet_conserves_within_the_measured_bound():
    # bench/lrp_conservation.py, whole sample: composite 0.11-0.25 per 96³ window (the previous rule: 4.7-7.7),
    # all of it absorbed by conv biases
    net, x, w = real_window("segxai-resunet-3mm", 64)
    explainer = LRP()
    result = explainer.attribute(net, x, 1, w)
    err = conservation_error(result.totals)
    print("bundled U-Net, 64³ liver window, composite: conservation error", err)
    assert w.sum() > 1000 and result.totals["score"] > 0
    assert err < 0.3
    gap = result.totals["score"] - result.totals["relevance_sum"]
    assert sum(relevance_ledger(explainer).values()) == pytest.approx(gap, rel=1e-3)  # the biases, nothing else


def test_bundled_transunet_conserves_within_the_measured_bound():
    # bench/lrp_conservation.py, whole sample: composite 0.038-0.051 per window (the previous rule: 1.8-6.4)
    net, x, w = real_window("segxai-transunet-3mm", 96)  # its position embeddings fix the window at 96³
    explainer = LRP()
    result = explainer.attribute(net, x, 1, w)
    err = conservation_error(result.totals)
    print("bundled TransUNet, 96³ liver window, composite: conservation error", err)
    assert w.sum() > 1000 and result.totals["score"] > 0
    assert err < 0.1
    # the recorded layers account for the gap; the position embeddings (not a layer) take < 0.1 % of F
    gap = result.totals["score"] - result.totals["relevance_sum"]
    assert abs(sum(relevance_ledger(explainer).values()) - gap) < 1e-3 * result.totals["score"]
