"""A short functional fine-tune of a trained SAE (``finetune``; docs/metrics.md, "Functional training").

The fine-tune trains the SAE's own architecture and knobs (``sae``) on ``finetune.loss`` with the LM in the loop,
for ``frac_tokens`` of ``sae.n_tokens``, from the trained weights (no data-dependent initialisation, no warm-ups,
no resampling, fresh Adam at ``finetune.lr``). Its MSE weight is ``finetune.mse_coeff``, or with ``balanced`` the
source SAE's KL / MSE on the first batch, so both terms start equal.
"""

from __future__ import annotations

import torch

from saelab.config import FinetuneConfig, FunctionalParams, SAEConfig
from saelab.saes.base import SAE


def finetune_config(sae_cfg: SAEConfig, ft: FinetuneConfig, mse_coeff: float) -> SAEConfig:
    """``sae``'s params for the fine-tune run: its architecture and knobs, the fine-tune's loss, length and lr."""
    raw = sae_cfg.model_dump()
    for section in raw.values():  # the SAE is trained: sparsity at full strength from the first step
        if isinstance(section, dict):
            section.update({k: v for k, v in (("l1_warmup_frac", 0.0), ("k_anneal_start", None)) if k in section})
    weights = FunctionalParams(kl_coeff=ft.kl_coeff, mse_coeff=mse_coeff, ds_coeff=ft.ds_coeff)
    return SAEConfig.model_validate(
        raw
        | {
            "loss": ft.loss,
            "functional": weights.model_dump(),
            "source": "stream",
            "n_tokens": max(sae_cfg.batch_size, int(ft.frac_tokens * sae_cfg.n_tokens)),
            "lr": ft.lr,
            "lr_warmup_tokens": 0,
            "lr_decay_frac": ft.lr_decay_frac,
            "resample": "none",
            "normalize_activations": "none",  # a saved SAE reads raw activations
        }
    )


@torch.no_grad()
def balanced_mse_coeff(sae: SAE, objective, tokens: torch.Tensor) -> tuple[float, float, float]:
    """(kl_coeff · KL / MSE, KL, MSE) of ``sae`` on the prompts ``tokens``: the MSE weight at which the two terms of
    the fine-tune's loss start equal."""
    x, batch = objective.prepare(tokens)
    out = sae(x, train=True, progress=0.0)  # progress 0: no training-only side effects (BatchTopK's θ window)
    _, (kl, *_) = objective.loss(out, batch)
    kl, mse = float(kl), float(out.mse)
    if mse <= 0:  # a perfect reconstruction: KL is 0 too, any weight balances
        return 0.0, kl, mse
    return objective.w.kl_coeff * kl / mse, kl, mse
