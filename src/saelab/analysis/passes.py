"""Analyses that stream eval tokens through the LM and SAE, in one pass.

On every row of the analysis sample (``analysis.max_tokens``, drawn with ``evaluate.seed``):
the running top activations of every feature (max-activating examples) and how many
ultra-low features fire together. On the CE rows of the same sample, which are exactly
the evaluate stage's CE rows: top-k ablation (CE and MSE per k) and the per-token CE
difference between the spliced reconstruction and the clean model, through the same
:func:`~saelab.eval.evaluate.clean_pass` / :func:`~saelab.eval.evaluate.spliced_ce` as evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.data.hooks import activation, covered_positions
from saelab.eval.evaluate import EvalSample, clean_pass, spliced_ce
from saelab.eval.metrics import SquaredError
from saelab.saes.base import SAE


def topk_mask(f: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest activations of each row of f (N, d_sae), zero the rest; None keeps all."""
    if k is None or k >= f.shape[-1]:
        return f
    vals, idx = f.topk(k, dim=-1)
    return torch.zeros_like(f).scatter_(-1, idx, vals)


def merge_topk(best_v: torch.Tensor, best_i: torch.Tensor, v: torch.Tensor, i: torch.Tensor, k: int):
    """Merge running per-feature top-k (d_sae, k) with a batch's (d_sae, n) values and token indices."""
    allv, alli = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
    top = allv.topk(k, dim=1)
    return top.values, alli.gather(1, top.indices)


@dataclass
class PassResult:
    top_values: torch.Tensor  # (d_sae, n_examples), 0 where the feature fired fewer times
    top_tokens: torch.Tensor  # (d_sae, n_examples) global token index row * n_ctx + pos
    cofire_max_share: float
    cofire_top: list  # [(share, global token index)] best first
    topk: dict = field(default_factory=dict)  # k (or "all") -> {"ce": float, "mse": float}
    ce_clean: float = float("nan")
    ce_zero: float = float("nan")
    ce_diff: np.ndarray | None = None  # per predicted token: CE_sae - CE_clean
    ce_diff_index: np.ndarray | None = None  # global index of the predicted token
    n_tokens: int = 0
    ce_tokens: int = 0


@torch.no_grad()
def run_pass(
    model,
    sae: SAE,
    rows: np.ndarray,
    hook: str,
    ultra: torch.Tensor,
    cfg,
    sample: EvalSample,
    device,
    exclude_token: int | None = None,
    progress=None,
) -> PassResult:
    """Examples and co-firing on every row of ``sample``; top-k and per-token CE on its CE rows.

    Positions outside the SAE's domain (``exclude_token``) count nowhere: their feature
    activations are zeroed and every splice leaves them clean.
    """
    n_ctx = rows.shape[1]
    k_ex = cfg.n_examples
    best_v = torch.zeros(sae.d_sae, k_ex, device=device)
    best_i = torch.full((sae.d_sae, k_ex), -1, dtype=torch.long, device=device)
    ultra = ultra.to(device)
    n_ultra = int(ultra.sum())
    cof_v = torch.zeros(0, device=device)
    cof_i = torch.zeros(0, dtype=torch.long, device=device)
    ks = [*cfg.topk, None]
    ce_sums = dict.fromkeys(ks, 0.0)
    recon = {k: SquaredError() for k in ks}  # each top-k ablation's reconstruction MSE on covered tokens
    ce_clean = ce_zero = 0.0
    diffs, diff_idx, n_pred = [], [], 0
    for tokens, ids, in_ce in sample.batches(rows, cfg.batch_rows, device):
        gidx = torch.from_numpy(ids).to(device)[:, None] * n_ctx + torch.arange(n_ctx, device=device)  # (B, T)
        covered = covered_positions(tokens, exclude_token)  # (B, T)
        if in_ce:
            clean, x = clean_pass(model, tokens, hook)  # (B, T-1), (B, T, d)
        else:
            x = activation(model, tokens, hook)
        x = x.reshape(-1, sae.d_in).float()
        f = sae.encode(x) * covered.reshape(-1, 1)  # (N, d_sae); uncovered positions never fire
        gflat = gidx.reshape(-1)
        # 1. max-activating examples
        v, i = f.T.topk(min(k_ex, len(f)), dim=1)
        best_v, best_i = merge_topk(best_v, best_i, v, gflat[i], k_ex)
        # 2. ultra-low co-firing
        if n_ultra:
            share = (f[:, ultra] > 0).sum(1).float() / n_ultra
            cof_v, cof_i = torch.cat([cof_v, share]), torch.cat([cof_i, gflat])
            top = cof_v.topk(min(5, len(cof_v)))
            cof_v, cof_i = top.values, cof_i[top.indices]
        # 3. top-k ablation and per-token CE difference (CE rows only)
        if in_ce:
            ce_clean += clean.double().sum().item()
            ce_zero += spliced_ce(model, tokens, hook, torch.zeros_like(x), covered).double().sum().item()
            cov = covered.reshape(-1)
            for k in ks:
                f_k = topk_mask(f, k)
                x_hat = sae.decode(f_k)
                ce = spliced_ce(model, tokens, hook, x_hat, covered)
                ce_sums[k] += ce.double().sum().item()
                recon[k].add(x[cov], x_hat[cov])
                if k is None:
                    diffs.append((ce - clean).reshape(-1).cpu().numpy())
                    diff_idx.append(gidx[:, 1:].reshape(-1).cpu().numpy())
            n_pred += clean.numel()
        if progress is not None:
            progress(tokens.numel())
    res = PassResult(
        top_values=best_v.cpu(),
        top_tokens=best_i.cpu(),
        cofire_max_share=float(cof_v[0]) if len(cof_v) else 0.0,
        cofire_top=[(float(a), int(b)) for a, b in zip(cof_v.cpu(), cof_i.cpu())],
        n_tokens=sample.n_rows * n_ctx,
        ce_tokens=n_pred,
    )
    if n_pred:
        res.ce_clean, res.ce_zero = ce_clean / n_pred, ce_zero / n_pred
        res.topk = {("all" if k is None else k): {"ce": ce_sums[k] / n_pred, "mse": recon[k].mse()} for k in ks}
        res.ce_diff, res.ce_diff_index = np.concatenate(diffs), np.concatenate(diff_idx)
    return res
