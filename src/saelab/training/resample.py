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


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


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

    A transcoder's ``x`` holds its input and target side by side (B, 2 d_in): inputs are scored by the error on
    their target, the decoder row is the unit vector of (target - b_dec) and the encoder column that of the
    input (which it reads uncentred), with the same 0.2 x mean alive norm.
    """
    idx = dead.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return 0
    if mode == "reinit":
        touched = sae.reinit_rows_(idx, gen)
    else:
        x, y = (x[:, : sae.d_in], x[:, sae.d_in :]) if sae.transcoder else (x, x)
        x_hat = sae.decode(sae.train_activations(x))  # the model being trained (BatchTopK: batch top-k, not θ)
        weights = resample_probabilities((x_hat - y).pow(2).sum(-1)).float().cpu()
        picks = torch.multinomial(weights, idx.numel(), replacement=idx.numel() > len(x), generator=gen).to(x.device)
        dirs = _unit(y[picks].float() - sae.b_dec)  # (n_dead, d_in)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        touched = sae.resample_rows_(idx, dirs, enc_norm)
        if sae.transcoder:  # the encoder column reads the input that was badly reconstructed, not its target
            sae.W_enc[:, idx] = _unit(x[picks].float()).T * 0.2 * enc_norm
    for p, sl in touched:
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][sl] = 0.0
    return idx.numel()
