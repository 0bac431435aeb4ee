"""Functional losses: train an SAE on what the LM does with its reconstruction (``sae.loss: kl | kl_ds``).

Per step, a batch of whole prompts goes through the frozen LM twice (docs/metrics.md, "Functional training"):

1. clean, without gradients: the next-token log-probabilities, the activation x at the SAE's hook and, for
   ``kl_ds``, the residual stream after the hook's block and every later block;
2. with the SAE's reconstruction x̂ spliced in at the covered positions (every position, or all but BOS under
   ``activations.bos: exclude``, as evaluate's CE splice), with gradients to the SAE only.

loss = kl_coeff · KL + mse_coeff · (MSE(x̂, x) + AuxK) + ds_coeff · mean_sites MSE(resid_spliced, resid_clean)
       + the architecture's sparsity terms (its loss less its MSE and its activation-space terms),

AuxK (TopK's and BatchTopK's dead-latent loss, ``TrainOutput.aux_mse``) is an activation-space MSE, ~100x a KL in
nats: it takes the MSE's weight, so a pure KL run (``mse_coeff: 0``) has none, as sparsify's default
``auxk_alpha: 0``; under ``mse_coeff: 0`` dead TopK latents are not revived.

KL = mean over covered positions of Σ_v p_clean(v) (log p_clean(v) − log p_spliced(v)), in nats. Every MSE is a
sum over dimensions and a mean over covered tokens, as the architectures' mse_loss. The LM's weights never get a
gradient (they are frozen here and checked by tests/test_functional.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from saelab.config import FunctionalParams
from saelab.data.hooks import covered_positions, grab_into, splice
from saelab.errors import InputError
from saelab.saes.base import TrainOutput


def kl_per_position(clean_log_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ spliced) of the next-token distributions per position, (B, T) nats, from the clean run's
    log-probabilities and the spliced run's logits (B, T, V)."""
    return (clean_log_probs.exp() * (clean_log_probs - logits.float().log_softmax(-1))).sum(-1)


def downstream_hooks(hook: str, layer: int, n_layers: int) -> list[str]:
    """The residual stream after the hook's block and after every later block (``kl_ds``'s sites); a hook that is
    itself a block's resid_post starts at the next block (its own site would be the activation MSE again)."""
    first = layer + 1 if hook.endswith("hook_resid_post") else layer
    return [f"blocks.{i}.hook_resid_post" for i in range(first, n_layers)]


def prompt_batches(rows: np.ndarray, n_rows: int, seed: int, skip_steps: int = 0) -> Iterator[torch.Tensor]:
    """Endless (n_rows, n_ctx) int64 batches of whole prompts, each pass over ``rows`` in a fresh seeded order
    (as the activation stream's refills); ``skip_steps`` batches are skipped (a resumed run)."""
    epoch, step = 0, 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        for i in range(0, len(order) - n_rows + 1, n_rows):  # a pass's last partial batch is never used
            if step >= skip_steps:
                yield torch.from_numpy(rows[np.sort(order[i : i + n_rows])].astype(np.int64))
            step += 1
        epoch += 1


class Batch(NamedTuple):
    tokens: torch.Tensor  # (B, T)
    covered: torch.Tensor  # (B, T) bool: positions the SAE replaces
    acts: torch.Tensor  # (B, T, d) clean activation at the hook
    log_probs: torch.Tensor  # (B, T, V) clean next-token log-probabilities
    resid: dict  # downstream hook -> (B, T, d_model) clean residual stream (kl_ds)


class Functional:
    """The LM side of a functional loss: ``prepare`` runs the clean pass of a prompt batch and gives the SAE's
    inputs; ``loss`` splices the SAE's reconstruction in and returns the loss and its logged terms."""

    def __init__(self, model, hook: str, layer: int, n_layers: int, loss: str, weights: FunctionalParams,
                 exclude_token: int | None):  # fmt: skip
        if loss not in ("kl", "kl_ds"):
            raise InputError(f"sae.loss: {loss!r} is not a functional loss (kl, kl_ds)")
        self.model, self.hook, self.loss_name, self.w = model, hook, loss, weights
        self.exclude_token = exclude_token
        self.sites = downstream_hooks(hook, layer, n_layers) if loss == "kl_ds" else []
        if loss == "kl_ds" and not self.sites:
            raise InputError(
                f"sae.loss: kl_ds at {hook}: no block after it, so no downstream residual stream to match; "
                "use sae.loss: kl (or an earlier activations.hook)"
            )
        self.TERMS = ("kl", "ds_mse") if loss == "kl_ds" else ("kl",)
        for p in model.parameters():  # frozen: the SAE is trained, never the LM
            p.requires_grad_(False)

    @torch.no_grad()
    def prepare(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Batch]:
        """The clean pass: (x, the batch's context), x = (n_covered, d) fp32 activations at covered positions."""
        got: dict = {}
        hooks = [(self.hook, grab_into(got, "x")), *((h, grab_into(got, h)) for h in self.sites)]
        logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
        covered = covered_positions(tokens, self.exclude_token)
        acts = got["x"].float()
        batch = Batch(tokens, covered, acts, logits.float().log_softmax(-1), {h: got[h].float() for h in self.sites})
        return acts[covered], batch

    def loss(self, out: TrainOutput, batch: Batch, input_scale: float = 1.0) -> tuple[torch.Tensor, list]:
        """(loss, [KL, downstream MSE]) for the SAE's ``out`` on ``prepare``'s x (scaled by ``input_scale``)."""
        if out.x_hat is None:
            raise InputError(
                "this architecture's train_forward returns no x_hat, which sae.loss: kl splices into the LM; "
                "return TrainOutput(..., x_hat) (src/saelab/saes/base.py)"
            )
        x_hat = out.x_hat.float() / input_scale  # the LM's units
        values = batch.acts.index_put((batch.covered,), x_hat)  # clean at uncovered positions (BOS)
        got: dict = {}
        hooks = [(self.hook, splice(values)), *((h, grab_into(got, h)) for h in self.sites)]
        logits = self.model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        kl = kl_per_position(batch.log_probs, logits)[batch.covered].mean()
        aux = 0.0 if out.aux_mse is None else out.aux_mse  # activation-space: weighted as the MSE
        total = self.w.kl_coeff * kl + (out.loss - out.mse - aux) + self.w.mse_coeff * (out.mse + aux)
        terms = [kl]
        if self.sites:
            ds = torch.stack([
                (got[h].float() - batch.resid[h]).pow(2).sum(-1)[batch.covered].mean() for h in self.sites
            ]).mean()  # fmt: skip
            total = total + self.w.ds_coeff * ds
            terms.append(ds)
        return total, terms
