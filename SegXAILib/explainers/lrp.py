"""Layer-wise Relevance Propagation (Bach et al. 2015) with the published rules, per layer type.

Default (``rule="composite"``, zennit's EpsilonGammaBox, Montavon et al. 2019 "LRP: an overview"): ε on dense
(Linear) layers, γ on convolutions and transposed convolutions, z^B (box rule, bounds ``low``/``high`` = the
model input's range: the HU window scaled to [0, 1], see ``preprocessing.IntensityWindow``) on every layer that
reads the network input. ``"composite-zplus"`` uses z⁺ on the convolutions (as zennit's EpsilonPlus/EpsilonPlusFlat);
``input_rule="flat"`` the flat rule at the input. ``"epsilon"`` and ``"alphabeta"`` apply that one rule to every
convolution and linear layer, the input layer included. Rules follow zennit 0.5.1 exactly, biases included
(γ, z⁺, αβ: b⁺ joins the positive, b⁻ the negative denominator; ε: b in z; z^B: b cancels) — oracle-tested.

Implementation: a modified backward pass that carries g = R/a, so relevance at a tensor a is R = a ⊙ g. Linear
and convolutional layers get an explicit rule in a custom autograd function; the plain gradient is already the
rule elsewhere: (P/Leaky)ReLU pass relevance unchanged, skip additions split it in proportion to the summands,
concatenations route it per channel. Input-layer rules (z^B, flat) give relevance to zero-valued voxels too
(air is 0), so their relevance is collected directly instead of through g.

Norms, following Ali et al. (ICML 2022, "XAI for Transformers: better explanations through conservative
propagation"): LayerNorm and InstanceNorm (per-sample statistics) are y = γ(x − μ)/σ + β with only σ detached;
the centring x − μ stays in the graph, so the normalisation is a linear map of x and passes relevance with
LRP-0 (stabiliser 1e-6); β absorbs its share. Eval-mode BatchNorm (and norms with running statistics) is an
affine per-channel map, y = a·x + c with c = β − a·μ_run: the same LRP-0 rule, c absorbs (not merged into the
preceding convolution; zennit's default for an unmerged BN is to pass relevance unchanged instead).

Transformers (the TransUNet's ViT), also Ali et al.: the softmax attention matrix is held constant, so the
output is linear in the values; GELU passes relevance unchanged (R_in = R_out, the identity rule for a gate).

Where relevance goes: F − ΣR_input = what the layers' biases (and ε/stabilisers) absorb + what the norms' shifts
(β, running means) absorb + what the TransUNet's position embeddings take at their addition. ``relevance_ledger``
records ΣR_out − ΣR_in per layer; ``bench/lrp_conservation.py`` measures it on the bundled sample (8 windows,
shares of the tiled volume's F; negative = created):
- the centring makes the bias of a conv that feeds an instance norm cancel in total under ε, but not under the
  per-voxel denominators of γ/z⁺: the U-Net's composite loses 12 % (0.11–0.25 per window), 14 % through the
  bias of its top transposed conv (``model.2.0.conv``) alone;
- under ε the U-Net creates 49 % instead, 43 % through the bias of the first unit's residual conv, which reads
  the input with no norm after it (z^B has no bias term, so the composite loses nothing there);
- the TransUNet's composite creates 4 %, through the bias of its 1×1 logits head (ε 6.5 %, composite-zplus
  0.8 %); its norms' β and its position embeddings take < 0.1 % each. αβ is off by 56–57 % on both models
  (it is not conservative where an output lacks contributions of one sign).
The previous rule (ε, norm means frozen as constants) was off by 6.2 (U-Net) and 4.1 (TransUNet) per window.
Networks with other layer types are refused by name.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegXAIError
from .base import Attribution, Explainer, target_score

_CONV = (nn.Conv3d, nn.ConvTranspose3d)
_LINEAR = _CONV + (nn.Linear,)
_NORMS = (nn.InstanceNorm3d, nn.BatchNorm3d, nn.LayerNorm)
_PASS = (nn.PReLU, nn.ReLU, nn.LeakyReLU, nn.Dropout, nn.Dropout3d, nn.Identity, nn.Upsample)
_GATES = (nn.GELU, nn.SiLU)
#: rule sets: "composite" ε dense / γ conv / input rule; "composite-zplus" ε dense / z⁺ conv / input rule;
#: "epsilon" and "alphabeta" one rule on every convolution and linear layer (the input layer included)
RULES = ("composite", "composite-zplus", "epsilon", "alphabeta")
#: rules for the layers that read the network input, in the composites
INPUT_RULES = ("zbox", "flat")
#: stabiliser of every rule other than ε (γ, z⁺, αβ, z^B, flat, norms), as zennit's default
STABILIZER = 1e-6


def _linear(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The module's linear map with a chosen weight and bias."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.ConvTranspose3d):
        return F.conv_transpose3d(x, weight, bias, module.stride, module.padding, module.output_padding, module.groups, module.dilation)
    return F.conv3d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + ε·sign(z), sign(0) = +1 (zennit's ``stabilize``)."""
    return z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _vjp(module: nn.Module, like: torch.Tensor, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Wᵀ s for the module's linear map (the gradient of ⟨lin(x), s⟩ with respect to x)."""
    x = torch.zeros_like(like).requires_grad_(True)
    (g,) = torch.autograd.grad(_linear(module, x, weight, None), x, s)
    return g


def _pos(t):
    return None if t is None else t.clamp(min=0)


def _bias_view(m: nn.Module, b: Optional[torch.Tensor], like: torch.Tensor):
    """A bias broadcastable against the module's output (channels on dim 1 for convolutions, last for Linear)."""
    if b is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return b if isinstance(m, nn.Linear) else b.view((1, -1) + (1,) * (like.ndim - 2))


def _positive_part(m: nn.Module, a: torch.Tensor, z: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    """P = a⁺·w⁺ + a⁻·w⁻ + b⁺ (the positive contributions) in one linear map: ½[(z − b) + |a|·|w|] + b⁺."""
    return 0.5 * (z - _bias_view(m, b, z) + _linear(m, a.abs(), w.abs(), None)) + _bias_view(m, _pos(b), z)


def _density(rule: str, m: nn.Module, a: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, p: dict) -> torch.Tensor:
    """g_in = R_in / a for a rule whose R_in carries a factor a_i per input (ε, z⁺, γ, αβ); 0 where a = 0.

    With w± and a± the positive/negative parts, zennit's denominators are z (ε), P = a⁺w⁺ + a⁻w⁻ + b⁺ (z⁺,
    αβ's positive side), N = z − P (αβ's negative side), z + γP for z > 0 and z + γN for z < 0 (γ)."""
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if rule == "epsilon":
        g_in = _vjp(m, a, w, relevance / _stab(z, p["epsilon"]))
    elif rule == "zplus":  # R_i = Σ_j (a_i w_ij)⁺-side / P_j · R_j
        s = relevance / _stab(_positive_part(m, a, z, w, b), STABILIZER)
        g_in = torch.where(a > 0, _vjp(m, a, w.clamp(min=0), s), _vjp(m, a, w.clamp(max=0), s))
    elif rule == "gamma":  # generalised γ (Montavon 2019; Andéol 2021): favour contributions of the output's sign
        g = p["gamma"]
        positive = _positive_part(m, a, z, w, b)
        s_p = torch.where(z > 0, relevance / _stab(z + g * positive, STABILIZER), torch.zeros_like(z))
        s_n = torch.where(z < 0, relevance / _stab(z + g * (z - positive), STABILIZER), torch.zeros_like(z))
        # a > 0: (w + γw⁺)ᵀs_p + (w + γw⁻)ᵀs_n, a < 0: the mirror; w± = (w ± |w|)/2 gives two maps instead of four.
        # Safe here: |z + γP| ≥ |z| and |z + γN| ≥ |z|, so s_p, s_n never exceed |R/z|.
        whole = _vjp(m, a, w, s_p + s_n)
        spread = _vjp(m, a, w.abs(), s_p - s_n)
        g_in = (1 + 0.5 * g) * whole + 0.5 * g * torch.sign(a) * spread
    elif rule == "alphabeta":
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        positive = _positive_part(m, a, z, w, b)
        sp = p["alpha"] * relevance / _stab(positive, STABILIZER)
        sn = p["beta"] * relevance / _stab(z - positive, STABILIZER)
        g_in = torch.where(a > 0, _vjp(m, a, wp, sp) - _vjp(m, a, wn, sn), _vjp(m, a, wn, sp) - _vjp(m, a, wp, sn))
    else:
        raise AssertionError(rule)
    return torch.where(a != 0, g_in, torch.zeros_like(g_in))


def _input_relevance(rule: str, m: nn.Module, a: torch.Tensor, relevance: torch.Tensor, p: dict) -> torch.Tensor:
    """R_in for the input-layer rules, which give relevance to zero-valued inputs too."""
    w = m.weight.detach()
    if rule == "zbox":  # (a w − l w⁺ − h w⁻) / (z − l w⁺ − h w⁻); the bias cancels, as in zennit
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        low, high = torch.full_like(a, p["low"]), torch.full_like(a, p["high"])
        den = _linear(m, a, w, None) - _linear(m, low, wp, None) - _linear(m, high, wn, None)
        s = relevance / _stab(den, STABILIZER)
        return a * _vjp(m, a, w, s) - low * _vjp(m, a, wp, s) - high * _vjp(m, a, wn, s)
    if rule == "flat":  # every input of a receptive field gets an equal share
        ones = torch.ones_like(w)
        den = _linear(m, torch.ones_like(a), ones, None)
        return _vjp(m, a, ones, relevance / _stab(den, STABILIZER))
    raise AssertionError(rule)


class _Ledger:
    """Per-layer bookkeeping of one backward pass: input-rule relevance, and what each layer absorbs."""

    def __init__(self) -> None:
        self.input_relevance: Optional[torch.Tensor] = None
        self.absorbed: dict = {}

    def absorb(self, name: str, r_out: torch.Tensor, r_in: torch.Tensor) -> None:
        self.absorbed[name] = self.absorbed.get(name, 0.0) + float(r_out.sum() - r_in.sum())


class _LinearRule(torch.autograd.Function):
    """Identity forward on a layer's output; backward applies the layer's LRP rule."""

    @staticmethod
    def forward(ctx, a, z, module, rule, params, ledger, name):
        ctx.save_for_backward(a, z)
        ctx.module, ctx.rule, ctx.params, ctx.ledger, ctx.name = module, rule, params, ledger, name
        return z.clone()

    @staticmethod
    def backward(ctx, g):
        a, z = ctx.saved_tensors
        relevance = z * g
        with torch.enable_grad():
            if ctx.rule in INPUT_RULES:
                r_in = _input_relevance(ctx.rule, ctx.module, a, relevance, ctx.params)
                led = ctx.ledger
                led.input_relevance = r_in if led.input_relevance is None else led.input_relevance + r_in
                g_in = torch.zeros_like(a)
            else:
                g_in = _density(ctx.rule, ctx.module, a, z, relevance, ctx.params)
                r_in = a * g_in
        ctx.ledger.absorb(ctx.name, relevance, r_in)
        return g_in, None, None, None, None, None, None


class _NormRule(torch.autograd.Function):
    """Identity forward on a norm's output y = A x + c; backward scales g by (y − c)/(y ± 1e-6) (LRP-0 on A x + c)."""

    @staticmethod
    def forward(ctx, y, shift, ledger, name):
        ctx.save_for_backward(y, shift)
        ctx.ledger, ctx.name = ledger, name
        return y.clone()

    @staticmethod
    def backward(ctx, g):
        y, shift = ctx.saved_tensors
        s = g * y / _stab(y, STABILIZER)  # relevance y⊙g over the stabilised output; ΣR_in = Σ (y − c) ⊙ s
        ctx.ledger.absorb(ctx.name, y * g, (y - shift) * s)
        return s, None, None, None


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


def _sigma_detached_norm(module: nn.Module, x: torch.Tensor):
    """The norm as an affine map of x, (y, shift): per-sample statistics with only σ detached (Ali et al. 2022),
    or running statistics (eval batch norm), where the mean is a constant and joins the shift."""
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
        scale = 1.0 / torch.sqrt(var + module.eps)
        shift = -mean * scale
        y = x * scale + shift
    else:
        centred = x - x.mean(dim=dims, keepdim=True)  # centring kept in the graph: a linear map of x
        scale = 1.0 / torch.sqrt(centred.detach().pow(2).mean(dim=dims, keepdim=True) + module.eps)
        y, shift = centred * scale, torch.zeros((), dtype=x.dtype, device=x.device)
    if affine and module.weight is not None:
        weight = module.weight.detach().view(param_shape)
        y, shift = y * weight, shift * weight
        if module.bias is not None:
            bias = module.bias.detach().view(param_shape)
            y, shift = y + bias, shift + bias
    return y, torch.broadcast_to(shift, y.shape).detach()


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


def _number(name: str, value, low: float = -math.inf, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SegXAIError(f"LRP parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < low or (strict and v == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise SegXAIError(f"LRP parameter {name} must be finite and {bound}, got {value!r}")
    return v


class LRP(Explainer):
    """LRP with a rule per layer type: by default ε (dense) / γ (convolutions) / z^B (input), see the module doc."""

    name = "lrp"
    bf16 = "never"  # the rules' stabilised divisions and conservation need fp32

    def __init__(self, rule: str = "composite", epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0,
                 beta: float = 1.0, input_rule: str = "zbox", low: float = 0.0, high: float = 1.0) -> None:
        if rule not in RULES:
            raise SegXAIError(f"unknown LRP rule {rule!r}; use one of {', '.join(RULES)}")
        if input_rule not in INPUT_RULES:
            raise SegXAIError(f"unknown LRP input rule {input_rule!r}; use one of {', '.join(INPUT_RULES)}")
        self.rule, self.input_rule = rule, input_rule
        self.epsilon = _number("epsilon", epsilon, 0.0, strict=True)
        self.gamma = _number("gamma", gamma, 0.0)
        self.alpha, self.beta = _number("alpha", alpha, 1.0), _number("beta", beta, 0.0)
        if abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise SegXAIError(f"the αβ rule needs α − β = 1 (e.g. α=2, β=1), got α={alpha}, β={beta}")
        self.low, self.high = _number("low", low), _number("high", high)
        if not self.high > self.low:
            raise SegXAIError(f"the z^B input bounds need low < high (the model input's range, e.g. 0 and 1), got {low}, {high}")
        self.last_ledger: Optional[_Ledger] = None

    @property
    def composite(self) -> bool:
        return self.rule.startswith("composite")

    def params(self) -> dict:
        """Every parameter, with ``input_rule`` as it takes effect (the rule itself outside the composites)."""
        return {"rule": self.rule, "epsilon": self.epsilon, "gamma": self.gamma, "alpha": self.alpha, "beta": self.beta,
                "input_rule": self.input_rule if self.composite else self.rule, "low": self.low, "high": self.high}

    def layer_rule(self, module: nn.Module, reads_input: bool) -> str:
        """The rule a convolution or linear layer gets."""
        if not self.composite:
            return self.rule
        if reads_input:
            return self.input_rule
        if isinstance(module, nn.Linear):
            return "epsilon"
        return "gamma" if self.rule == "composite" else "zplus"

    def _hooks(self, network: nn.Module, x: torch.Tensor, ledger: _Ledger) -> list:
        params = {"epsilon": self.epsilon, "gamma": self.gamma, "alpha": self.alpha, "beta": self.beta,
                  "low": self.low, "high": self.high}
        handles = []
        for name, module in network.named_modules():
            if isinstance(module, _LINEAR):
                def hook(mod, inp, out, name=name):
                    rule = self.layer_rule(mod, inp[0] is x and not isinstance(mod, nn.Linear))
                    return _LinearRule.apply(inp[0], out.detach(), mod, rule, params, ledger, name)
                handles.append(module.register_forward_hook(hook))
            elif isinstance(module, _NORMS):
                def norm_hook(mod, inp, out, name=name):
                    y, shift = _sigma_detached_norm(mod, inp[0])
                    return _NormRule.apply(y, shift, ledger, name)
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
        ledger = _Ledger()
        handles = self._hooks(network, x, ledger)
        try:
            with torch.enable_grad():
                score = target_score(network(x), class_index, weights).sum()
                (grad,) = torch.autograd.grad(score, x)
        finally:
            for h in handles:
                h.remove()
        relevance = x.detach() * grad
        if ledger.input_relevance is not None:
            relevance = relevance + ledger.input_relevance.detach()
        self.last_ledger = ledger
        relevance = relevance[:, 0]
        return Attribution(relevance, {"relevance_sum": float(relevance.sum()), "score": float(score.detach())})


def relevance_ledger(explainer: LRP) -> dict:
    """What each rule layer and norm absorbed (ΣR_out − ΣR_in, by module name) in the explainer's last call."""
    if explainer.last_ledger is None:
        raise SegXAIError("relevance_ledger needs an LRP that has run attribute() first")
    return dict(explainer.last_ledger.absorbed)


def conservation_error(totals: dict) -> float:
    """|Σ R_input − F(x)| / |F(x)| from summed totals (nan when the score is 0)."""
    if totals["score"] == 0:
        return float("nan")
    return abs(totals["relevance_sum"] - totals["score"]) / abs(totals["score"])
