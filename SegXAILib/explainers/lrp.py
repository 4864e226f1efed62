"""Layer-wise Relevance Propagation (Bach et al. 2015) through a convolutional segmentation network.

Implemented as a modified backward pass: relevance at any tensor t is R_t = t ⊙ g_t, where g is what the
modified backward carries. Convolutions and transposed convolutions (the U-Net's strided down- and
up-sampling) get an explicit rule in a custom autograd function: ε (R_in = a ⊙ Wᵀ(R/(z + ε·sign z))) or
αβ (positive and negative contributions split, bias ignored). With R = t ⊙ g, the ordinary gradient is
already the LRP rule for the rest of the graph: PReLU/ReLU (positively homogeneous) pass relevance
unchanged, skip additions split it in proportion to the summands, concatenations route it per channel.
Instance/batch/layer norm is treated explicitly as a linear map with frozen per-sample statistics,
y = γ(x − μ)/σ + β, with the ε rule; its shift (like every bias) absorbs relevance, which is why the
conservation error Σ R_input vs the target score is reported rather than assumed zero.

Transformers (the TransUNet's ViT) follow the conservative propagation of Ali et al. (ICML 2022): linear
layers get the same ε/αβ rules; in self-attention the softmax attention matrix is held constant, so the
output is linear in the values and relevance flows through them only; GELU passes relevance unchanged
(R_in = R_out, the identity rule for a gate). Networks with other layer types are refused by name.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegXAIError
from .base import Attribution, Explainer, target_score

_LINEAR = (nn.Conv3d, nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.InstanceNorm3d, nn.BatchNorm3d, nn.LayerNorm)
_PASS = (nn.PReLU, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout3d, nn.Identity, nn.Upsample)
_GATES = (nn.GELU, nn.SiLU)
RULES = ("epsilon", "alphabeta")


def _linear(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The module's linear map with a chosen weight and bias."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.ConvTranspose3d):
        return F.conv_transpose3d(x, weight, bias, module.stride, module.padding, module.output_padding, module.groups, module.dilation)
    return F.conv3d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _vjp(module, like, weight, s):
    """Wᵀ s for the module's linear map (the gradient of ⟨lin(x), s⟩ with respect to x)."""
    x = torch.zeros_like(like).requires_grad_(True)
    (g,) = torch.autograd.grad(_linear(module, x, weight, None), x, s)
    return g


class _LinearRule(torch.autograd.Function):
    """Identity forward on a layer's output; backward applies the LRP rule for that layer."""

    @staticmethod
    def forward(ctx, a, z, module, rule, eps, alpha, beta):
        ctx.save_for_backward(a, z)
        ctx.module, ctx.rule, ctx.eps, ctx.alpha, ctx.beta = module, rule, eps, alpha, beta
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        a, z = ctx.saved_tensors
        m, w = ctx.module, ctx.module.weight.detach()
        with torch.enable_grad():
            if ctx.rule == "epsilon":
                s = g * z / _stab(z, ctx.eps)
                return _vjp(m, a, w, s), None, None, None, None, None, None
            relevance = z * g
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            ap, an = a.clamp(min=0), a.clamp(max=0)
            zp = _linear(m, ap, wp, None) + _linear(m, an, wn, None)
            zn = _linear(m, ap, wn, None) + _linear(m, an, wp, None)
            sp = ctx.alpha * relevance / (zp + ctx.eps)
            sn = ctx.beta * relevance / (zn - ctx.eps)
            r_in = ap * (_vjp(m, a, wp, sp) - _vjp(m, a, wn, sn)) + an * (_vjp(m, a, wn, sp) - _vjp(m, a, wp, sn))
        safe = torch.where(a != 0, a, torch.ones_like(a))
        return torch.where(a != 0, r_in / safe, torch.zeros_like(a)), None, None, None, None, None, None


class _EpsScale(torch.autograd.Function):
    """Identity forward; backward scales the gradient by y / (y + ε·sign y) (ε rule for a linear map)."""

    @staticmethod
    def forward(ctx, y, eps):
        ctx.save_for_backward(y)
        ctx.eps = eps
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y / _stab(y, ctx.eps), None


class _GateRule(torch.autograd.Function):
    """Forward f(x); backward g · f(x)/x, so that x ⊙ g_in = f(x) ⊙ g_out: relevance passes a gate unchanged."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        safe = torch.where(x != 0, x, torch.ones_like(x))
        return torch.where(x != 0, g * y / safe, torch.zeros_like(g)), None


def _frozen_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm as a linear map of x: per-sample (instance/layer) or running (batch, eval) statistics, detached."""
    if isinstance(module, nn.LayerNorm):  # statistics and affine over the trailing normalized_shape
        dims = tuple(range(x.ndim - len(module.normalized_shape), x.ndim))
        param_shape = tuple(module.normalized_shape)
        affine = module.elementwise_affine
    else:  # per channel, statistics over space
        dims = tuple(range(2, x.ndim))
        param_shape = (1, -1) + (1,) * (x.ndim - 2)
        affine = getattr(module, "affine", False)
    use_running = getattr(module, "track_running_stats", False) and not module.training and module.running_mean is not None
    if use_running:
        mean, var = module.running_mean.view(param_shape), module.running_var.view(param_shape)
    else:
        mean = x.mean(dim=dims, keepdim=True).detach()
        var = x.var(dim=dims, unbiased=False, keepdim=True).detach()
    y = (x - mean) / torch.sqrt(var + module.eps)
    if affine and module.weight is not None:
        y = y * module.weight.detach().view(param_shape)
        if module.bias is not None:
            y = y + module.bias.detach().view(param_shape)
    return y


def _is_attention(module: nn.Module) -> bool:
    """MONAI's self-attention block in the form this LRP can rewrite (combined or separate q/k/v, no extras)."""
    from monai.networks.blocks.selfattention import SABlock

    return (isinstance(module, SABlock) and getattr(module, "rel_positional_embedding", None) is None
            and not getattr(module, "causal", False))


def _attention_with_constant_weights(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The SABlock's output recomputed with its softmax attention matrix detached (linear in the values)."""
    if module.use_combined_linear:
        q, k, v = module.input_rearrange(module.qkv(x))
    else:
        q, k, v = (module.input_rearrange(f(x)) for f in (module.to_q, module.to_k, module.to_v))
    att = (torch.einsum("blxd,blyd->blxy", q, k) * module.scale).softmax(dim=-1).detach()
    out = module.out_rearrange(torch.einsum("bhxy,bhyd->bhxd", att, v))
    if module.include_fc:
        out = module.out_proj(out)
    return module.drop_output(out)


def check_supported(network: nn.Module) -> None:
    """Refuse networks with layers this LRP has no rule for (one clear line naming the first one)."""
    inside_attention = set()
    for name, module in network.named_modules():
        if _is_attention(module):
            inside_attention.update(f"{name}.{child}" for child, _ in module.named_modules() if child)
    for name, module in network.named_modules():
        leaf = len(list(module.children())) == 0
        if leaf and name not in inside_attention and not isinstance(module, _LINEAR + _NORMS + _PASS + _GATES):
            raise SegXAIError(
                f"LRP has no rule for layer {name!r} ({type(module).__name__}); it covers convolutions, linear layers, "
                "norms, (P/Leaky)ReLU, GELU and MONAI self-attention — use gradcam, hirescam, gradcampp or ig for this model"
            )


class LRP(Explainer):
    """LRP with the ε rule (default) or the αβ rule (α − β = 1) on convolutions; ε on norms."""

    name = "lrp"
    bf16 = "never"  # the rules' stabilised divisions and conservation need fp32

    def __init__(self, rule: str = "epsilon", epsilon: float = 1e-6, alpha: float = 1.0, beta: float = 0.0) -> None:
        if rule not in RULES:
            raise SegXAIError(f"unknown LRP rule {rule!r}; use one of {', '.join(RULES)}")
        if rule == "alphabeta" and abs(alpha - beta - 1.0) > 1e-9:
            raise SegXAIError(f"the αβ rule needs α − β = 1, got α={alpha}, β={beta}")
        self.rule, self.epsilon, self.alpha, self.beta = rule, float(epsilon), float(alpha), float(beta)

    def params(self) -> dict:
        p = {"rule": self.rule, "epsilon": self.epsilon}
        if self.rule == "alphabeta":
            p.update(alpha=self.alpha, beta=self.beta)
        return p

    def _hooks(self, network: nn.Module) -> list:
        handles = []
        for module in network.modules():
            if isinstance(module, _LINEAR):
                def hook(mod, inp, out):
                    return _LinearRule.apply(inp[0], out.detach(), mod, self.rule, self.epsilon, self.alpha, self.beta)
                handles.append(module.register_forward_hook(hook))
            elif isinstance(module, _NORMS):
                def norm_hook(mod, inp, out):
                    return _EpsScale.apply(_frozen_norm(mod, inp[0]), self.epsilon)
                handles.append(module.register_forward_hook(norm_hook))
            elif isinstance(module, _GATES):
                def gate_hook(mod, inp, out):
                    return _GateRule.apply(inp[0], out.detach())
                handles.append(module.register_forward_hook(gate_hook))
            elif _is_attention(module):
                def attention_hook(mod, inp, out):
                    return _attention_with_constant_weights(mod, inp[0])
                handles.append(module.register_forward_hook(attention_hook))
        return handles

    def attribute(self, network, inputs, class_index, weights, baseline: Optional[torch.Tensor] = None) -> Attribution:
        check_supported(network)
        x = inputs.detach().clone().requires_grad_(True)
        handles = self._hooks(network)
        try:
            with torch.enable_grad():
                score = target_score(network(x), class_index, weights).sum()
                (grad,) = torch.autograd.grad(score, x)
        finally:
            for h in handles:
                h.remove()
        relevance = (x.detach() * grad)[:, 0]
        return Attribution(relevance, {"relevance_sum": float(relevance.sum()), "score": float(score.detach())})


def conservation_error(totals: dict) -> float:
    """|Σ R_input − F(x)| / |F(x)| from summed totals (nan when the score is 0)."""
    if totals["score"] == 0:
        return float("nan")
    return abs(totals["relevance_sum"] - totals["score"]) / abs(totals["score"])
