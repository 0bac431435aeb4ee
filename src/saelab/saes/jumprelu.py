"""``jumprelu``: f = pre * H(pre - θ) with a learned per-feature θ >= 0, trained through
straight-through estimators of bandwidth ε (Rajamanoharan et al. 2024) with an L0 penalty in the
"step" form (the paper's) or the "tanh" form (the penalty alone of Anthropic's January 2025 update, not its
straight-through gradient to the pre-activations nor its pre-activation loss) (docs/metrics.md)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_serializer
from torch import nn

from saelab.errors import InputError
from saelab.registry import register
from saelab.saes.base import SAE, TrainOutput, fires, l0, mse_loss
from saelab.saes.free_decoder import DecoderParams, FreeDecoderMixin, tied_init_


class JumpReLUParams(DecoderParams):
    """``sae.jumprelu``: learned per-feature thresholds, straight-through estimators (Rajamanoharan et al. 2024)."""

    l0_coeff: float = Field(1.0, gt=0)
    """Weight of the sparsity penalty."""
    bandwidth: float = Field(0.05, gt=0)
    """Width ε of the straight-through estimators' rectangle kernel (SAELens's default)."""
    threshold_init: float = Field(0.01, gt=0)
    sparsity: Literal["step", "tanh"] = "tanh"
    """``tanh``: Σ tanh(tanh_scale · f · ‖W_dec[i]‖) (the penalty of Anthropic's January 2025 update, without
    its other parts: docs/metrics.md); ``step``: L0 = Σ H(pre − θ)
    (the paper's; in the CPU frontier's 150-step runs its L0 responded to l0_coeff only from ``b_dec_init: zero``:
    benchmarks/results/frontier_cpu)."""
    tanh_scale: float = Field(4.0, gt=0)
    b_dec_init: Literal["mean", "zero"] = "mean"
    """b_dec at the start: the first batch's mean, or 0 as SAELens's trainer starts it. With ``step`` the start
    decides the L0 of short runs (docs/metrics.md, "b_dec's start"). Saved configs carry it only when ``zero``."""
    theta_param: Literal["raw", "log"] = "raw"
    """``raw``: θ is the parameter, clamped at 0 after each step (SAELens); ``log``: the parameter is log θ
    (the paper's), so θ never reaches 0 (docs/metrics.md, "The θ = 0 trap"). Saved configs carry it only when
    ``log``."""

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler):
        out = handler(self)
        if self.b_dec_init == "mean":  # as TopKParams: SAEs saved before the key existed keep their files
            out.pop("b_dec_init", None)
        if self.theta_param == "raw":
            out.pop("theta_param", None)
        return out


def _rect(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel: 1 on (-1/2, 1/2)."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre · H(pre − θ); ∂/∂pre = H(pre − θ), ∂/∂θ = −(θ/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(theta / eps) * _rect((pre - theta) / eps) * g
        return g * (pre > theta), g_theta.sum(0), None


class StepFn(torch.autograd.Function):
    """H(pre − θ); ∂/∂pre = 0, ∂/∂θ = −(1/ε)·K((pre − θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        return None, (-(1 / eps) * _rect((pre - theta) / eps) * g).sum(0), None


@register
class JumpReLU(FreeDecoderMixin, SAE):
    """f = pre · H(pre − θ) with a learned per-feature θ >= 0; loss = mse + l0_coeff · sparsity, with
    sparsity = Σ_i H(pre_i − θ_i) ("step") or Σ_i tanh(c · f_i · ‖W_dec[i]‖) ("tanh"); unit-norm decoder
    rows or free ones (SAELens: no rescaling, f carries 1/‖W_dec[i]‖; folded into f and θ at the end).

    ``theta_param: raw``: θ is the parameter ``threshold``, clamped at 0 after every step (as SAELens trains
    it); ``log``: the parameter is ``log_threshold`` and θ = exp of it (the paper's), never 0. ``theta()`` is θ
    in both."""

    architecture = "jumprelu"
    Params = JumpReLUParams
    COMMON_PARAMS = ()
    KNOB = ("jumprelu", "l0_coeff")
    TERMS = ("l0_penalty",)
    FEATURE_AXIS = {**SAE.FEATURE_AXIS, "threshold": 0}  # an instance's names its θ parameter (theta_name)

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        seed: int | None = 0,
        l0_coeff: float = 1.0,
        bandwidth: float = 0.05,
        threshold_init: float = 0.01,
        sparsity: str = "tanh",
        tanh_scale: float = 4.0,
        decoder: str = "free",
        dec_init_norm: float = 0.1,
        grad_clip: float = 1.0,
        b_dec_init: str = "mean",
        theta_param: str = "raw",
    ):
        self.set_decoder_(decoder, dec_init_norm, grad_clip)
        if b_dec_init not in ("mean", "zero"):
            raise InputError(f"sae.jumprelu.b_dec_init: {b_dec_init!r} is not one of mean, zero")
        if theta_param not in ("raw", "log"):
            raise InputError(f"sae.jumprelu.theta_param: {theta_param!r} is not one of raw, log")
        self.b_dec_init, self.theta_param = b_dec_init, theta_param
        self.l0_coeff, self.bandwidth, self.threshold_init = l0_coeff, bandwidth, threshold_init
        self.sparsity, self.tanh_scale = sparsity, tanh_scale
        SAE.__init__(self, d_in, d_sae, seed=None)
        self.theta_name = "log_threshold" if theta_param == "log" else "threshold"
        self.FEATURE_AXIS = {**SAE.FEATURE_AXIS, self.theta_name: 0}
        setattr(self, self.theta_name, nn.Parameter(torch.empty(d_sae)))
        self.init_theta_(slice(None))
        if seed is not None:
            self.init_weights_(torch.Generator().manual_seed(seed))

    def arch_params(self) -> dict:
        return {
            "l0_coeff": self.l0_coeff,
            "bandwidth": self.bandwidth,
            "threshold_init": self.threshold_init,
            "sparsity": self.sparsity,
            "tanh_scale": self.tanh_scale,
            **self.decoder_params(),
            **({"b_dec_init": "zero"} if self.b_dec_init == "zero" else {}),
            **({"theta_param": "log"} if self.theta_param == "log" else {}),
        }  # as JumpReLUParams saves it

    def theta(self) -> torch.Tensor:
        """θ (d_sae,): the parameter itself (``raw``) or exp of it (``log``)."""
        return self.log_threshold.exp() if self.theta_param == "log" else self.threshold

    @torch.no_grad()
    def init_theta_(self, idx) -> None:
        """θ[idx] = threshold_init (its log under ``log``)."""
        t = self.threshold_init
        getattr(self, self.theta_name)[idx] = math.log(t) if self.theta_param == "log" else t

    @torch.no_grad()
    def scale_theta_(self, n: torch.Tensor | float, divide: bool = False) -> None:
        """θ ← θ · n, or θ / n with ``divide`` (n > 0): θ's share of a fold. Dividing is its own operation, not
        a product with 1 / n, so a raw θ folds to the same bits as it did before ``theta_param`` existed."""
        if self.theta_param == "log":
            log_n = torch.log(torch.as_tensor(n, dtype=self.log_threshold.dtype))
            self.log_threshold.add_(-log_n if divide else log_n)
        elif divide:
            self.threshold /= n
        else:
            self.threshold *= n

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        tied_init_(self, gen, self.init_norm())
        if hasattr(self, "theta_name"):
            self.init_theta_(slice(None))

    @torch.no_grad()
    def init_from_data_(self, x: torch.Tensor) -> None:
        """b_dec at the first batch's mean, or left at 0 (``b_dec_init: zero``, as SAELens's trainer starts)."""
        if self.b_dec_init == "mean":
            self.b_dec.copy_(x.float().mean(0))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.theta())

    def train_forward(self, x: torch.Tensor, progress: float, target: torch.Tensor | None = None) -> TrainOutput:
        target = x if target is None else target  # what is reconstructed: x, or a transcoder's target
        pre = self.pre_acts(x)
        theta = self.theta()
        f = JumpReLUFn.apply(pre, theta, self.bandwidth)
        x_hat = self.decode(f)
        mse = mse_loss(x_hat.float(), target)
        if self.sparsity == "step":
            penalty = StepFn.apply(pre, theta, self.bandwidth).sum(-1).mean()
        else:
            penalty = torch.tanh(self.tanh_scale * f * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return TrainOutput(mse + self.l0_coeff * penalty, mse, (penalty,), fires(f), l0(f), x_hat)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        if self.theta_param == "raw":
            self.threshold.clamp_(min=0.0)

    @torch.no_grad()
    def fold_decoder_norms_(self) -> torch.Tensor:
        n = super().fold_decoder_norms_()
        self.scale_theta_(n)
        return n

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        super().fold_input_scale_(s)
        self.scale_theta_(s, divide=True)

    @torch.no_grad()
    def resample_rows_(self, idx, dirs, enc_norm):
        touched = super().resample_rows_(idx, dirs, enc_norm)
        self.init_theta_(idx)
        return [*touched, (getattr(self, self.theta_name), (idx,))]

    def saelens(self):
        cfg, w = super().saelens()
        return {**cfg, "architecture": "jumprelu"}, {**w, "threshold": self.theta().detach().float().clone()}
