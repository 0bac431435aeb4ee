"""Probes: optional instruments and interventions around the trainer's step, for the reference post's open
questions (questions/, docs/questions.md). None of them runs in the default pipeline; with no
probes the trainer does exactly what it did without them (same operations, same bits).

A probe may add a loss term, act on gradients between backward and the architecture's own
gradient surgery, act on weights after the architecture's constraints, watch per-step fire
counts, veto resampling of some features and react to a resampling. ``outputs(out)`` writes
what it recorded next to the saved SAE.

* ``DensityHistory``: every feature's firing rate per interval of training tokens, and every
  resampling event, as Parquet (question 4);
* ``Holdout``: a seeded random subset of features that resampling never touches (question 4);
* ``GradientSum``: the sum over training of each feature's encoder-weight gradient, reset when
  the feature is resampled (question 1, the commenters' gradient hypothesis);
* ``Orthogonalize``: encoder columns kept orthogonal to a fixed direction at every step (question 2);
* ``EncoderPenalty``: an L1 or L2 penalty on the encoder weights (question 8);
* ``Tie``: W_enc = W_decᵀ throughout (question 8; standard architecture only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from saelab.errors import InputError
from saelab.io import save_weights


class Probe:
    """No-op base: every hook does nothing."""

    def start(self, sae) -> None:
        """Once, before the first step (after the data-dependent initialisation)."""

    def loss(self, sae) -> torch.Tensor | None:
        """An extra loss term added before backward (None: none)."""
        return None

    def before_step(self, sae) -> None:
        """After backward, before the architecture's gradient surgery and the optimiser step."""

    def after_step(self, sae) -> None:
        """After the optimiser step and the architecture's constraints."""

    def observe(self, fired: torch.Tensor, n_tokens: int, tokens_done: int) -> None:
        """Per-step fire counts (d_sae,) over ``n_tokens`` tokens; ``tokens_done`` counts this step."""

    def keep(self, dead: torch.Tensor) -> torch.Tensor:
        """The features resampling may touch, given the ones it found dying."""
        return dead

    def after_resample(self, sae, idx: torch.Tensor, tokens_done: int) -> None:
        """Features ``idx`` were just re-initialised."""

    def outputs(self, out: Path) -> None:
        """Write what was recorded into the run's output directory."""


class DensityHistory(Probe):
    """Fire counts of every feature per ``every`` training tokens -> ``density.parquet``
    (tokens = end of the interval, feature, fires, interval_tokens) and ``resamples.parquet``
    (tokens, feature). A rate is fires / interval_tokens; an interval resolves rates down to
    1 / interval_tokens (0 fires is "below that", not "dead forever")."""

    def __init__(self, every: int):
        if every <= 0:
            raise InputError(f"density_every: {every} must be a positive number of tokens")
        self.every = every
        self.rows: list[tuple[int, np.ndarray, int]] = []
        self.events: list[tuple[int, np.ndarray]] = []
        self.counts: torch.Tensor | None = None
        self.tokens = 0

    def observe(self, fired, n_tokens, tokens_done):
        self.counts = fired.detach().clone() if self.counts is None else self.counts + fired
        self.tokens += n_tokens
        if self.tokens >= self.every:
            self.rows.append((tokens_done, self.counts.cpu().numpy().astype(np.int64), self.tokens))
            self.counts, self.tokens = None, 0

    def after_resample(self, sae, idx, tokens_done):
        self.events.append((tokens_done, idx.cpu().numpy()))

    def table(self) -> pa.Table:
        d = len(self.rows[0][1]) if self.rows else 0
        return pa.table(
            {
                "tokens": pa.array(np.repeat([r[0] for r in self.rows], d).astype(np.int64)),
                "feature": pa.array(np.tile(np.arange(d, dtype=np.int32), len(self.rows))),
                "fires": pa.array(np.concatenate([r[1] for r in self.rows]) if self.rows else np.zeros(0, np.int64)),
                "interval_tokens": pa.array(np.repeat([r[2] for r in self.rows], d).astype(np.int64)),
            }
        )

    def outputs(self, out):
        pq.write_table(self.table(), out / "density.parquet")
        ev = [(t, i) for t, idx in self.events for i in idx]
        pq.write_table(
            pa.table(
                {
                    "tokens": pa.array([t for t, _ in ev], pa.int64()),
                    "feature": pa.array([int(i) for _, i in ev], pa.int32()),
                }
            ),
            out / "resamples.parquet",
        )


class Holdout(Probe):
    """A seeded random ``frac`` of all features is never resampled (their dying is watched instead)."""

    def __init__(self, d_sae: int, frac: float, seed: int):
        if not 0.0 < frac < 1.0:
            raise InputError(f"holdout: {frac} must be a fraction in (0, 1)")
        g = torch.Generator().manual_seed(seed)
        self.held = torch.zeros(d_sae, dtype=torch.bool)
        self.held[torch.randperm(d_sae, generator=g)[: round(frac * d_sae)]] = True

    def keep(self, dead):
        return dead & ~self.held.to(dead.device)

    def outputs(self, out):
        pq.write_table(
            pa.table({"feature": pa.array(self.held.nonzero().squeeze(-1).numpy().astype(np.int32))}),
            out / "holdout.parquet",
        )


class GradientSum(Probe):
    """Sum over steps of dLoss/dW_enc (d_in, d_sae), per feature since its last resampling, and
    the number of steps in each column's sum. Column i is the direction training pushed feature
    i's encoder weights against (gradient descent moves them along minus this sum, up to Adam's
    per-coordinate scaling)."""

    def __init__(self):
        self.sum: torch.Tensor | None = None
        self.steps: torch.Tensor | None = None

    def before_step(self, sae):
        g = sae.W_enc.grad
        if g is None:
            return
        if self.sum is None:
            self.sum = torch.zeros_like(g, dtype=torch.float32)
            self.steps = torch.zeros(g.shape[1], dtype=torch.int64, device=g.device)
        self.sum += g.float()
        self.steps += 1

    def after_resample(self, sae, idx, tokens_done):
        if self.sum is not None:
            self.sum[:, idx] = 0.0
            self.steps[idx] = 0

    def outputs(self, out):
        if self.sum is not None:
            save_weights(out / "grad_sum.safetensors", {"grad_sum": self.sum.cpu(), "steps": self.steps.cpu()})


class Orthogonalize(Probe):
    """Keep every encoder column orthogonal to the unit ``direction`` (d_in,): projected out at the
    start, after every step and after every resampling (the reference's fix for the ultra-low cluster)."""

    def __init__(self, direction: torch.Tensor):
        n = direction.norm()
        if not torch.isfinite(n) or n == 0:
            raise InputError("orthogonalize: the direction is zero or not finite")
        self.u = (direction / n).float()

    @torch.no_grad()
    def _project(self, sae):
        u = self.u.to(sae.W_enc.device, sae.W_enc.dtype)
        sae.W_enc -= u[:, None] * (u @ sae.W_enc)[None, :]

    def start(self, sae):
        self._project(sae)

    def after_step(self, sae):
        self._project(sae)

    def after_resample(self, sae, idx, tokens_done):
        self._project(sae)


class EncoderPenalty(Probe):
    """``coeff`` x sum over all encoder weights of |w| (``kind`` l1) or w² (l2), added to the loss."""

    def __init__(self, kind: str, coeff: float):
        if kind not in ("l1", "l2") or coeff < 0:
            raise InputError(f"encoder penalty: kind {kind!r} must be l1 or l2 and coeff {coeff} >= 0")
        self.kind, self.coeff = kind, coeff

    def loss(self, sae):
        w = sae.W_enc.float()
        return self.coeff * (w.abs().sum() if self.kind == "l1" else w.pow(2).sum())


class Tie(Probe):
    """W_enc = W_decᵀ throughout (Cunningham et al.): the shared weights take the sum of both
    gradients (put on W_dec before the architecture's tangential projection, then the unit-norm
    rows are copied into W_enc); W_enc itself gets no optimiser update. Standard architecture only."""

    def __init__(self, sae):
        if sae.architecture != "standard":
            raise InputError(
                f"tie: only the standard architecture (unit-norm decoder) can be tied, not {sae.architecture!r}"
            )

    @torch.no_grad()
    def _copy(self, sae):
        sae.W_enc.copy_(sae.W_dec.T)

    def start(self, sae):
        self._copy(sae)

    @torch.no_grad()
    def before_step(self, sae):
        if sae.W_enc.grad is not None:
            # in place on W_dec's own gradient (or a contiguous copy): ``W_enc.grad.T + W_dec.grad`` takes the
            # transposed operand's strides, and fused Adam then updates the wrong elements (the tied
            # run of commit a85f687 diverged that way; tests/test_questions.py checks the layout)
            g = sae.W_enc.grad.T
            sae.W_dec.grad = g.contiguous() if sae.W_dec.grad is None else sae.W_dec.grad.add_(g)
            sae.W_enc.grad = None

    def after_step(self, sae):
        self._copy(sae)

    def after_resample(self, sae, idx, tokens_done):
        self._copy(sae)
