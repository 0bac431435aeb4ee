"""Reconstruction and CE-loss metrics on held-out tokens (definitions: docs/metrics.md).

Every metric is a small pure function of tensors or of streamed sums, so it can be
checked by hand; :func:`evaluate` streams a seeded sample of the eval split through the
LM and SAE and accumulates those sums. Every CE number of the pipeline (here, top-k
ablation and per-token CE in the analysis) goes through :func:`clean_pass` and
:func:`spliced_ce` on the rows of one :class:`EvalSample`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saelab.data.hooks import activation, capture, covered_positions, splice
from saelab.data.tokens import sample_rows
from saelab.eval.metrics import ReconSums, ce_recovered, frequency_fractions
from saelab.saes.base import SAE

# ---------------------------------------------------------------- pure metrics


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token CE per position: logits (B, T, V), tokens (B, T) -> (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


# ---------------------------------------------------------------- streaming evaluation


@dataclass
class Sums:
    """Running sums over eval tokens: the reconstruction metrics (saelab.eval.metrics) and the CE losses."""

    recon: ReconSums = field(default_factory=ReconSums)
    ce: dict = field(default_factory=lambda: {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0})
    ce_n: int = 0


@dataclass(frozen=True)
class EvalSample:
    """Rows of the eval split in play: ``ce`` get the LM passes of the CE metrics, ``rest`` only
    activation statistics. Both come from one seeded permutation, so ``ce`` is the same rows for
    every stage that uses the same ``evaluate.seed`` and ``evaluate.ce_max_tokens``."""

    ce: np.ndarray
    rest: np.ndarray

    @classmethod
    def draw(cls, n_rows: int, n_ctx: int, max_tokens: int | None, ev, seed: int | None = None) -> EvalSample:
        """Statistics on ``max_tokens`` of the permutation of ``evaluate.seed``; CE on evaluate's CE rows,
        min(evaluate.max_tokens, evaluate.ce_max_tokens) of it, whatever ``max_tokens`` the caller uses."""
        seed = ev.seed if seed is None else seed
        caps = [t for t in (ev.max_tokens, ev.ce_max_tokens) if t is not None]
        ce = sample_rows(n_rows, n_ctx, min(caps) if caps else None, seed)  # a prefix of the same permutation
        return cls(ce, np.setdiff1d(sample_rows(n_rows, n_ctx, max_tokens, seed), ce))

    @property
    def n_rows(self) -> int:
        return len(self.ce) + len(self.rest)

    def batches(self, rows: np.ndarray, batch_rows: int, device) -> Iterator[tuple[torch.Tensor, np.ndarray, bool]]:
        """(tokens (B, n_ctx), their row indices, whether they are CE rows): the CE rows first."""
        for idx, in_ce in ((self.ce, True), (self.rest, False)):
            for i in range(0, len(idx), batch_rows):
                ids = idx[i : i + batch_rows]
                yield torch.from_numpy(rows[ids].astype(np.int64)).to(device), ids, in_ce


@torch.no_grad()
def clean_pass(model, tokens: torch.Tensor, hook: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean model: per-token CE (B, T-1) and the activation at ``hook`` (B, T, d)."""
    logits, x = capture(model, tokens, hook)
    return token_ce(logits, tokens), x


@torch.no_grad()
def spliced_ce(model, tokens: torch.Tensor, hook: str, values: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Per-token CE (B, T-1) with the activation at ``hook`` replaced by ``values`` at ``covered`` positions."""
    return token_ce(model.run_with_hooks(tokens, fwd_hooks=[(hook, splice(values, keep=~covered))]), tokens)


@torch.no_grad()
def evaluate(
    model,
    sae: SAE,
    rows: np.ndarray,
    hook: str,
    mean: torch.Tensor,
    cfg,
    device,
    exclude_token: int | None = None,
    progress: bool = True,
    input_hook: str | None = None,
) -> tuple[dict, dict]:
    """Stream a seeded sample of eval ``rows`` (n, n_ctx): reconstruction stats on every sampled row,
    CE (clean, SAE splice, zero and mean ablation) on the first ``ce_max_tokens`` of the sample.
    A transcoder (``input_hook``: the hook it reads) is scored against ``hook``'s clean activation, its target,
    and its output is spliced there (docs/metrics.md, "Transcoders").

    Returns (metrics, per-feature arrays). Statistics count the covered positions only (all but
    ``exclude_token``, the BOS id under ``activations.bos: exclude``); CE counts every predicted
    token, with uncovered positions left clean in every splice (docs/metrics.md, "BOS policy").
    """
    n_ctx = rows.shape[1]
    sample = EvalSample.draw(len(rows), n_ctx, cfg.max_tokens, cfg)
    s = Sums()
    mean = mean.to(device)
    start = time.perf_counter()
    n_tokens = sample.n_rows * n_ctx  # pragma: no mutate (the progress bar's and the timing's count)
    bar = tqdm(total=n_tokens, desc="evaluate", unit="tok", unit_scale=True, disable=not progress)  # pragma: no mutate
    for tokens, _, in_ce in sample.batches(rows, cfg.batch_rows, device):
        covered = covered_positions(tokens, exclude_token)  # (B, T)
        if in_ce:
            clean, x = clean_pass(model, tokens, hook)
        else:
            x = activation(model, tokens, hook)
        x = x.float()
        x_in = x if input_hook is None else activation(model, tokens, input_hook).float()
        x_hat, f = sae(x_in.reshape(-1, x_in.shape[-1]))
        if in_ce:
            for name, values in (
                ("clean", None),
                ("sae", x_hat),
                ("zero", torch.zeros_like(x)),
                ("mean", mean.expand_as(x)),
            ):
                ce = clean if values is None else spliced_ce(model, tokens, hook, values, covered)
                s.ce[name] += ce.double().sum().item()
            s.ce_n += clean.numel()
        keep = covered.reshape(-1)
        s.recon.add(x.reshape(-1, x.shape[-1])[keep], x_hat[keep], f[keep])
        bar.update(tokens.numel())
    bar.close()
    seconds = time.perf_counter() - start
    metrics = summarize(s, cfg.ultra_low_threshold, cfg.dense_threshold)
    timing = {"eval_seconds": seconds, "eval_tokens_per_s": n_tokens / seconds}
    return metrics | {"eval_rows": sample.n_rows, "ce_eval_rows": len(sample.ce)}, {
        "fired": s.recon.fired.numpy(),
        "act_sum": s.recon.act_sum.numpy(),
        "timing": timing,
    }


# The SAE's headline numbers, in the order `dvc exp show` and `dvc metrics diff` list them
# (metrics/evaluate.json, the one file declared as DVC metrics); everything else evaluate measures
# goes to metrics/evaluate_detail.json.
HEADLINE = (
    "ce_recovered_zero",
    "l0",
    "explained_variance",
    "mse",
    "frac_dead",
    "frac_ultra_low",
    "l2_ratio",
    "ce_recovered_mean",
    "frac_dense",
)


def summarize(s: Sums, ultra_low: float, dense: float) -> dict:
    ce = {k: v / s.ce_n for k, v in s.ce.items()}
    recon = s.recon.result()
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "ce_recovered_zero": ce_recovered(ce["clean"], ce["sae"], ce["zero"]),
        "ce_recovered_mean": ce_recovered(ce["clean"], ce["sae"], ce["mean"]),
        "mean_ablation_recovered_zero": ce_recovered(ce["clean"], ce["mean"], ce["zero"]),
        "ce_eval_tokens": s.ce_n,
        "mse": recon["mse"],
        "explained_variance": recon["explained_variance"],
        "l0": recon["l0"],
        "l2_ratio": recon["l2_ratio"],
        **frequency_fractions(s.recon.freq(), ultra_low, dense),
        "eval_tokens": recon["eval_tokens"],
        **{k: v for k, v in recon.items() if k not in RECON_SHOWN},  # a metric added there reaches this file too
    }


RECON_SHOWN = ("mse", "explained_variance", "l0", "l2_ratio", "eval_tokens")  # placed by summarize itself
