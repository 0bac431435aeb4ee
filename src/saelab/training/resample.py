"""Resampling of dead features (docs/metrics.md, "Training algorithm"): Anthropic's recipe from Towards
Monosemanticity and the reference code's re-initialisation. The trainer calls :func:`resample_` every
``sae.resample_every`` tokens."""

from __future__ import annotations

import torch

from saelab.saes.base import SAE


def resample_probabilities(sq_err: torch.Tensor) -> torch.Tensor:
    """Sampling weights of inputs for resampling from their squared reconstruction errors (B,):
    proportional to the loss squared (Anthropic), plus a tiny floor so a perfect batch can still be drawn."""
    return sq_err.pow(2) + 1e-12


@torch.no_grad()
def resample_(
    sae: SAE, opt: torch.optim.Adam, dead: torch.Tensor, x: torch.Tensor, gen: torch.Generator, mode: str = "anthropic"
) -> int:
    """Re-initialise ``dead`` features; zero Adam's moments for the touched slices so stale momentum
    does not undo it. ``mode``:

    * ``anthropic`` (Towards Monosemanticity): score each input of ``x`` (B, d_in) by its squared
      reconstruction loss, squared; sample one input per dead feature with probability proportional
      to that score; decoder row = unit vector of (input - b_dec), encoder column = that vector times
      0.2 x the mean norm of the alive encoder columns, encoder bias = 0 (``sae.resample_rows_``);
    * ``reinit`` (the reference code): a fresh draw of the architecture's initialisation for those features.
    """
    idx = dead.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return 0
    if mode == "reinit":
        touched = sae.reinit_rows_(idx, gen)
    else:
        x_hat = sae.decode(sae.train_activations(x))  # the model being trained (BatchTopK: batch top-k, not θ)
        weights = resample_probabilities((x_hat - x).pow(2).sum(-1)).float().cpu()
        picks = torch.multinomial(weights, idx.numel(), replacement=idx.numel() > len(x), generator=gen)
        dirs = x[picks.to(x.device)].float() - sae.b_dec
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (n_dead, d_in)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        touched = sae.resample_rows_(idx, dirs, enc_norm)
    for p, sl in touched:
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
    return idx.numel()
