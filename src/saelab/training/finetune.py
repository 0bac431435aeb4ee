"""A short functional fine-tune of a trained SAE (``finetune``; docs/metrics.md, "Functional training").

The fine-tune trains the SAE's own architecture and knobs (``sae``) on ``finetune.loss`` with the LM in the loop,
for ``frac_tokens`` of ``sae.n_tokens``, from the trained weights (no data-dependent initialisation, no warm-ups,
no resampling, fresh Adam at ``finetune.lr``). Its weights are ``finetune.kl_coeff`` and ``finetune.mse_coeff``, or
with ``mse_coeff: balanced`` kl_share · MSE₀ / KL₀ and 1 − kl_share (KL₀, MSE₀: the SAE's on the first batch; the
default kl_share 1/2 gives MSE₀ / (2 KL₀) and 1/2): the two terms start in that ratio and sum to the source's own
MSE, so the sparsity penalty meets the reconstruction pressure it was trained against (a bare KL, ~0.2 nats
beside an MSE of ~30, would let it collapse L0).
"""

from __future__ import annotations

import math

import torch

from saelab.config import FinetuneConfig, FunctionalParams, SAEConfig
from saelab.errors import InputError
from saelab.registry import build
from saelab.saes.base import SAE
from saelab.saes.batchtopk import window_steps


def finetune_config(sae_cfg: SAEConfig, ft: FinetuneConfig, kl_coeff: float, mse_coeff: float) -> SAEConfig:
    """``sae``'s params for the fine-tune run: its architecture and knobs, the fine-tune's loss, length and lr."""
    if sae_cfg.normalize_activations != "none":
        raise InputError(
            f"finetune: the source SAE was trained with sae.normalize_activations: {sae_cfg.normalize_activations}, "
            "and its saved (folded) weights read raw activations, where its sparsity penalty weighs differently "
            "against the MSE; the fine-tune would not start from the balance it was trained at. Fine-tune an SAE "
            "trained with normalize_activations: none"
        )
    raw = sae_cfg.model_dump()
    for section in raw.values():  # the SAE is trained: sparsity at full strength from the first step
        if isinstance(section, dict):
            section.update({k: v for k, v in (("l1_warmup_frac", 0.0), ("k_anneal_start", None)) if k in section})
    n_tokens = max(sae_cfg.batch_size, int(ft.frac_tokens * sae_cfg.n_tokens))
    own = raw.get(sae_cfg.architecture)  # the architecture's knob section (BatchTopK's, or a plug-in's alike)
    if isinstance(own, dict) and "threshold_frac" in own:
        if window_steps(n_tokens // sae_cfg.batch_size, own["threshold_frac"]) < 1:  # θ's window: no fine-tune step
            own["threshold_frac"] = 1.0  # k is constant from the first step: θ over the whole fine-tune
    weights = FunctionalParams(kl_coeff=kl_coeff, mse_coeff=mse_coeff, ds_coeff=ft.ds_coeff)
    return SAEConfig.model_validate(
        raw
        | {
            "loss": ft.loss,
            "functional": weights.model_dump(),
            "source": "stream",
            "n_tokens": n_tokens,
            "lr": ft.lr,
            "lr_warmup_tokens": 0,
            "lr_decay_frac": ft.lr_decay_frac,
            "resample": "none",
            "normalize_activations": "none",  # a saved SAE reads raw activations
        }
    )


def finetuned_copy(sae: SAE, cfg: SAEConfig) -> SAE:
    """A new SAE of ``cfg`` (the fine-tune's params: warm-ups off) holding ``sae``'s weights; ``sae`` is not touched.
    Training-only buffers (TopK's dead counters, BatchTopK's threshold sums) start afresh, as in any run."""
    new = build(cfg, sae.d_in, seed=0)
    if new.d_sae != sae.d_sae:
        raise ValueError(f"the fine-tune's width {new.d_sae} is not the source SAE's {sae.d_sae}")
    new.load_state_dict(sae.state_dict())
    return new.to(next(sae.parameters()).device)


def weights(ft: FinetuneConfig, source: SAE, probe: SAEConfig, objective, tokens: torch.Tensor) -> dict:
    """The fine-tune's KL and MSE weights (``balanced_weights`` under ``mse_coeff: balanced``), with KL₀ and MSE₀.
    KL₀ and MSE₀ are those of ``source``'s fine-tune copy under ``probe`` (a ``finetune_config``): at the
    fine-tune's sparsity (no k annealing, no L1 warm-up), not at the source's step-0 schedule."""
    if ft.mse_coeff != "balanced":
        return {"kl_coeff": ft.kl_coeff, "mse_coeff": ft.mse_coeff, "kl_first_batch": None, "mse_first_batch": None}
    return balanced_weights(finetuned_copy(source, probe), objective, tokens, ft.kl_share)


@torch.no_grad()
def balanced_weights(sae: SAE, objective, tokens: torch.Tensor, kl_share: float = 0.5) -> dict:
    """KL and MSE weights kl_share · MSE₀ / KL₀ and 1 − kl_share, from ``sae``'s KL₀ and MSE₀ on the prompts
    ``tokens``: the terms start at kl_share · MSE₀ and (1 − kl_share) · MSE₀, their sum at the MSE loss the SAE
    was trained on (kl_share 1/2: both equal). ``sae`` is the fine-tune's copy (``finetuned_copy``), so KL₀ and
    MSE₀ are at the fine-tune's sparsity (no k annealing, no L1 warm-up); the training forward's side effects
    (BatchTopK's running threshold, whose window a fine-tune may widen to the whole run) stay in that copy."""
    if not 0 < kl_share <= 1:
        raise ValueError(f"kl_share must be in (0, 1], got {kl_share}")
    x, batch = objective.prepare(tokens)
    out = sae(x, train=True, progress=0.0)
    _, (kl, *_) = objective.loss(out, batch)
    kl, mse = float(kl), float(out.mse)
    if not (math.isfinite(kl) and math.isfinite(mse)):
        raise ValueError(f"the first batch's KL ({kl}) or MSE ({mse}) is not finite: the source SAE or the LM's "
                         "splice is broken (check the SAE loads and evaluates: `dvc repro evaluate`)")  # fmt: skip
    kl_coeff = kl_share * mse / kl if kl > 0 else 1.0  # KL 0 (a perfect splice): nothing to balance, KL at weight 1
    return {"kl_coeff": kl_coeff, "mse_coeff": 1 - kl_share, "kl_first_batch": kl, "mse_first_batch": mse}
