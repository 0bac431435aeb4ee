"""``standard_april``: Anthropic's April 2024 update. L1 weighted by decoder row norms (warmed up
over the first steps), no unit-norm constraint, encoder initialised as the decoder transpose with
small decoder rows, gradient-norm clipping (docs/metrics.md, "Architectures")."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from saelab.registry import register
from saelab.saes.base import SAE, TrainOutput, fires, l0, mse_loss
from saelab.saes.free_decoder import resample_free_rows_, tied_init_
from saelab.section import Section


class AprilParams(Section):
    """``sae.standard_april``: Anthropic's April 2024 recipe (docs/metrics.md, "Architectures")."""

    dec_init_norm: float = Field(0.1, gt=0)
    """Norm of every decoder row at initialisation (random directions; W_enc = W_dec^T)."""
    l1_warmup_frac: float = Field(0.05, ge=0, le=1)
    """The L1 coefficient rises linearly from 0 over this first fraction of training."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient-norm clipping before each step (0 = off)."""


@register
class StandardApril(SAE):
    """ReLU SAE, loss = mse + λ(t) Σ_i f_i ‖W_dec[i]‖, decoder rows free (Anthropic, April 2024)."""

    architecture = "standard_april"
    Params = AprilParams
    COMMON_PARAMS = ("l1_coeff",)
    KNOB = (None, "l1_coeff")
    TERMS = ("l1_weighted",)
    unit_norm_decoder = False

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        seed: int | None = 0,
        l1_coeff: float = 1.0,
        dec_init_norm: float = 0.1,
        l1_warmup_frac: float = 0.05,
        grad_clip: float = 1.0,
    ):
        self.dec_init_norm, self.l1_warmup_frac, self.grad_clip = dec_init_norm, l1_warmup_frac, grad_clip
        super().__init__(d_in, d_sae, seed, l1_coeff)

    def arch_params(self) -> dict:
        return {
            **super().arch_params(),
            "dec_init_norm": self.dec_init_norm,
            "l1_warmup_frac": self.l1_warmup_frac,
            "grad_clip": self.grad_clip,
        }

    @torch.no_grad()
    def init_weights_(self, gen: torch.Generator) -> None:
        tied_init_(self, gen, self.dec_init_norm)

    def train_forward(self, x: torch.Tensor, progress: float, target: torch.Tensor | None = None) -> TrainOutput:
        target = x if target is None else target  # what is reconstructed: x, or a transcoder's target
        f = self.encode(x)
        x_hat = self.decode(f)
        mse = mse_loss(x_hat.float(), target)
        l1w = (f.float() * self.W_dec.norm(dim=-1)).sum(-1).mean()
        warm = min(1.0, progress / self.l1_warmup_frac) if self.l1_warmup_frac > 0 else 1.0
        return TrainOutput(mse + self.l1_coeff * warm * l1w, mse, (l1w,), fires(f), l0(f), x_hat)

    @torch.no_grad()
    def before_step(self) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.grad_clip)

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        """Keep f, fold the scale into the maps: W_enc·s, W_dec/s, b_dec/s."""
        self.W_enc *= s
        self.W_dec /= s
        self.b_dec /= s

    @torch.no_grad()
    def resample_rows_(self, idx, dirs, enc_norm):
        return resample_free_rows_(self, super().resample_rows_, idx, dirs, enc_norm)
