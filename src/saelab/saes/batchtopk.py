"""``batchtopk``: the k x B largest pre-activations over the batch (Bussmann et al. 2024); at the end
of training one global threshold is estimated so inference runs as JumpReLU (docs/metrics.md)."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from saelab.errors import InputError
from saelab.registry import register
from saelab.saes.base import SAE, TrainOutput, fires, l0, mse_loss
from saelab.saes.topk import TopK, TopKParams


def window_steps(steps: int, threshold_frac: float) -> int:
    """Training steps at progress >= 1 − threshold_frac (the inference threshold's window) of ``steps``."""
    return steps - math.ceil(steps * (1 - threshold_frac))


class BatchTopKParams(TopKParams):
    """``sae.batchtopk``: k x batch latents per batch (Bussmann et al. 2024), JumpReLU at inference."""

    threshold_frac: float = Field(0.1, gt=0, le=1)
    """The inference threshold is the mean smallest selected activation over this last fraction of training;
    k annealing must end before it (TopKParams' check)."""

    def check_with(self, sae) -> None:
        """Against the rest of the ``sae`` section (SAEConfig calls it when batchtopk is chosen)."""
        steps = sae.n_tokens // sae.batch_size
        if window_steps(steps, self.threshold_frac) < 1:
            raise ValueError(
                f"sae.batchtopk.threshold_frac ({self.threshold_frac}) x {steps} training steps leaves no "
                "step to estimate the inference threshold from; raise it or sae.n_tokens"
            )


@register
class BatchTopK(TopK):
    """Training: the k·B largest pre-activations of the batch (ReLU). Inference: JumpReLU with one
    global threshold θ, the mean over the last ``threshold_frac`` of training of each batch's
    smallest selected activation (Bussmann et al. 2024)."""

    architecture = "batchtopk"
    Params = BatchTopKParams
    COMMON_PARAMS = ()
    KNOB = ("batchtopk", "k")
    TRAIN_BUFFERS = ("since_fired", "theta_sum", "theta_n")

    def __init__(self, d_in: int, d_sae: int, seed: int | None = 0, threshold_frac: float = 0.1, **topk):
        """TopK's arguments (``k``, ``k_aux``, ``aux_coeff``, ``dead_tokens``, the decoder's and the anneal's) and
        ``threshold_frac``, BatchTopKParams' fields."""
        self.threshold_frac = threshold_frac  # before TopK's __init__, whose anneal check reads it
        super().__init__(d_in, d_sae, seed, **topk)
        self.register_buffer("threshold", torch.zeros(d_sae))  # saved: inference reads it
        self.register_buffer("theta_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("theta_n", torch.zeros((), dtype=torch.float64), persistent=False)

    def arch_params(self) -> dict:
        return {**super().arch_params(), "threshold_frac": self.threshold_frac}

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def batch_topk(self, pre: torch.Tensor, k: int | None = None) -> torch.Tensor:
        flat = pre.relu().flatten()
        vals, idx = flat.topk(min((self.k if k is None else k) * len(pre), flat.numel()), sorted=False)
        return torch.zeros_like(flat).scatter_(0, idx, vals).view_as(pre)

    def train_activations(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch_topk(self.pre_acts(x))

    def train_forward(self, x: torch.Tensor, progress: float, target: torch.Tensor | None = None) -> TrainOutput:
        target = x if target is None else target  # what is reconstructed: x, or a transcoder's target
        pre = self.pre_acts(x)
        f = self.batch_topk(pre, self.k_at(progress))
        rows = self.dec_rows()
        x_hat = f @ rows + self.b_dec
        mse = mse_loss(x_hat.float(), target)
        dead = self.auxk_dead()
        if dead is not None:
            auxk = mse_loss((self.dense_aux_acts(pre, dead) @ rows).float(), (target - x_hat).detach().float())
        else:
            auxk = torch.zeros((), device=x.device)
        if progress >= 1 - self.threshold_frac:
            with torch.no_grad():
                live = f[f > 0]
                if live.numel():
                    self.theta_sum += live.min().double()
                    self.theta_n += 1
        aux = self.aux_coeff * auxk
        return TrainOutput(mse + aux, mse, (auxk,), fires(f), l0(f), x_hat, aux)

    @torch.no_grad()
    def finish_training_(self, average=lambda t: t) -> None:
        """θ in units of the (rescaled) pre-activations, which the norms' fold leaves unchanged."""
        n = average(self.theta_n.clone())
        if n <= 0:  # config validation rules this out; kept so a θ of 0 (plain ReLU) can never pass silently
            raise InputError(
                "batchtopk: no training step estimated the inference threshold; raise "
                "sae.batchtopk.threshold_frac or sae.n_tokens"
            )
        self.threshold.fill_(float(average(self.theta_sum.clone()) / n))
        super().finish_training_(average)

    @torch.no_grad()
    def fold_input_scale_(self, s: float) -> None:
        super().fold_input_scale_(s)
        self.threshold /= s

    def saelens(self):
        cfg, w = SAE.saelens(self)
        return {**cfg, "architecture": "jumprelu"}, {**w, "threshold": self.threshold.detach().float().clone()}
