"""Analyses that stream eval tokens through the LM and SAE, in one pass.

On every eval token (up to ``max_tokens``): the running top activations of every
feature (max-activating examples) and how many ultra-low features fire together.
On the first ``ce_max_tokens``: top-k ablation (CE and MSE per k) and the per-token
CE difference between the spliced reconstruction and the clean model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.activations import hook_activations
from saelab.evaluate import token_ce
from saelab.sae import SAE


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


def _splice(values: torch.Tensor):
    def hook(x, hook):  # noqa: ARG001
        return values.reshape(x.shape).to(x.dtype)

    return hook


@torch.no_grad()
def run_pass(model, sae: SAE, rows: np.ndarray, hook: str, layer: int, ultra: torch.Tensor, cfg, device, progress=None):
    n_ctx = rows.shape[1]
    max_rows = len(rows) if cfg.max_tokens is None else min(len(rows), -(-cfg.max_tokens // n_ctx))
    ce_rows = min(max_rows, -(-cfg.ce_max_tokens // n_ctx))
    k_ex = cfg.n_examples
    best_v = torch.zeros(sae.d_sae, k_ex, device=device)
    best_i = torch.full((sae.d_sae, k_ex), -1, dtype=torch.long, device=device)
    ultra = ultra.to(device)
    n_ultra = int(ultra.sum())
    cof_v = torch.zeros(0, device=device)
    cof_i = torch.zeros(0, dtype=torch.long, device=device)
    ks = [*cfg.topk, None]
    sums = {k: {"ce": 0.0, "mse": 0.0} for k in ks}
    ce_clean = ce_zero = 0.0
    diffs, diff_idx, n_ce = [], [], 0
    for r0 in range(0, max_rows, cfg.batch_rows):
        tokens = torch.from_numpy(rows[r0 : min(r0 + cfg.batch_rows, max_rows)].astype(np.int64)).to(device)
        gidx = (torch.arange(tokens.shape[0], device=device)[:, None] + r0) * n_ctx + torch.arange(n_ctx, device=device)
        gidx = gidx.reshape(-1)  # (N,) global token index
        in_ce = r0 < ce_rows
        if in_ce:
            grabbed = {}

            def grab(a, hook):  # noqa: ARG001
                grabbed["x"] = a
                return a

            clean = token_ce(model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)]), tokens)  # (B, T-1)
            x = grabbed["x"].reshape(-1, sae.d_in).float()
        else:
            x = hook_activations(model, tokens, hook, layer).reshape(-1, sae.d_in).float()
        f = sae.encode(x)  # (N, d_sae)
        # 1. max-activating examples
        v, i = f.T.topk(min(k_ex, len(f)), dim=1)
        best_v, best_i = merge_topk(best_v, best_i, v, gidx[i], k_ex)
        # 2. ultra-low co-firing
        if n_ultra:
            share = (f[:, ultra] > 0).sum(1).float() / n_ultra
            cof_v, cof_i = torch.cat([cof_v, share]), torch.cat([cof_i, gidx])
            top = cof_v.topk(min(5, len(cof_v)))
            cof_v, cof_i = top.values, cof_i[top.indices]
        # 3. top-k ablation and per-token CE difference
        if in_ce:
            ce_clean += clean.double().sum().item()
            zero = token_ce(model.run_with_hooks(tokens, fwd_hooks=[(hook, _splice(torch.zeros_like(x)))]), tokens)
            ce_zero += zero.double().sum().item()
            for k in ks:
                x_hat = sae.decode(topk_mask(f, k))
                ce = token_ce(model.run_with_hooks(tokens, fwd_hooks=[(hook, _splice(x_hat))]), tokens)
                sums[k]["ce"] += ce.double().sum().item()
                sums[k]["mse"] += (x_hat - x).pow(2).sum().item()
                if k is None:
                    diffs.append((ce - clean).reshape(-1).cpu().numpy())
                    diff_idx.append(gidx.reshape(tokens.shape)[:, 1:].reshape(-1).cpu().numpy())
            n_ce += tokens.numel()
        if progress is not None:
            progress(tokens.numel())
    n_pred = n_ce // n_ctx * (n_ctx - 1)
    res = PassResult(
        top_values=best_v.cpu(),
        top_tokens=best_i.cpu(),
        cofire_max_share=float(cof_v[0]) if len(cof_v) else 0.0,
        cofire_top=[(float(a), int(b)) for a, b in zip(cof_v.cpu(), cof_i.cpu())],
        n_tokens=max_rows * n_ctx,
        ce_tokens=n_pred,
    )
    if n_pred:
        res.ce_clean, res.ce_zero = ce_clean / n_pred, ce_zero / n_pred
        res.topk = {("all" if k is None else k): {"ce": s["ce"] / n_pred, "mse": s["mse"] / n_ce} for k, s in sums.items()}
        res.ce_diff, res.ce_diff_index = np.concatenate(diffs), np.concatenate(diff_idx)
    return res
