"""Reconstruction and CE-loss metrics on held-out tokens (definitions: DESIGN.md, "Definitions").

Every metric is a small pure function of tensors or of streamed sums, so it can be
checked by hand; :func:`evaluate` streams the eval split through the LM and SAE
and accumulates those sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saelab.activations import hook_activations
from saelab.sae import SAE

# ---------------------------------------------------------------- pure metrics


def ce_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """(CE_ablated - CE_sae) / (CE_ablated - CE_clean): 1 = perfect splice, 0 = as bad as ablation."""
    return (ce_ablated - ce_sae) / (ce_ablated - ce_clean)


def explained_variance(sse: float, sum_sq: float, sum_x: np.ndarray, n: int) -> float:
    """1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖², with the centred denominator from streamed sums.

    Σ‖x - μ‖² = Σ‖x‖² - n‖μ‖² where μ = Σx / n.
    """
    mu = np.asarray(sum_x, dtype=np.float64) / n
    return 1.0 - sse / (sum_sq - n * float(mu @ mu))


def l2_ratios(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-token ‖x̂‖ / ‖x‖ (B,); tokens with x = 0 are dropped."""
    nx = x.norm(dim=-1)
    keep = nx > 0
    return x_hat.norm(dim=-1)[keep] / nx[keep]


def token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token CE per position: logits (B, T, V), tokens (B, T) -> (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


# ---------------------------------------------------------------- streaming evaluation


@dataclass
class Sums:
    """Running sums over eval tokens (float64)."""

    n: int = 0
    sse: float = 0.0
    sum_sq: float = 0.0
    sum_x: np.ndarray | None = None
    l0: float = 0.0
    l2_ratio: float = 0.0
    l2_n: int = 0
    fired: torch.Tensor | None = None
    act_sum: torch.Tensor | None = None
    ce: dict = field(default_factory=lambda: {"clean": 0.0, "sae": 0.0, "zero": 0.0, "mean": 0.0})
    ce_n: int = 0

    def add_recon(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x64, err = x.double(), (x_hat - x).double()
        self.n += len(x)
        self.sse += err.pow(2).sum().item()
        self.sum_sq += x64.pow(2).sum().item()
        sx = x64.sum(0).cpu().numpy()
        self.sum_x = sx if self.sum_x is None else self.sum_x + sx
        self.l0 += (f > 0).sum().item()
        r = l2_ratios(x_hat.float(), x.float())
        self.l2_ratio += r.double().sum().item()
        self.l2_n += len(r)
        fired, acts = (f > 0).sum(0).double().cpu(), f.sum(0).double().cpu()
        self.fired = fired if self.fired is None else self.fired + fired
        self.act_sum = acts if self.act_sum is None else self.act_sum + acts


def _splice(value_fn):
    def hook(x, hook):  # noqa: ARG001
        return value_fn(x)

    return hook


@torch.no_grad()
def evaluate(model, sae: SAE, rows: np.ndarray, hook: str, layer: int, mean: torch.Tensor, cfg, device) -> tuple[dict, dict]:
    """Stream eval ``rows`` (n, n_ctx): reconstruction stats on all rows, CE on the first ``ce_max_tokens``.

    Returns (metrics, per-feature arrays). CE positions are every predicted token
    (BOS is input only); the splice replaces the hook's output at every position.
    """
    n_ctx = rows.shape[1]
    max_rows = len(rows) if cfg.max_tokens is None else min(len(rows), -(-cfg.max_tokens // n_ctx))
    ce_tokens = cfg.ce_max_tokens if cfg.ce_max_tokens is not None else max_rows * n_ctx
    ce_rows = min(max_rows, -(-ce_tokens // n_ctx))
    s = Sums()
    mean = mean.to(device)
    start = time.perf_counter()
    bar = tqdm(total=max_rows * n_ctx, desc="evaluate", unit="tok", unit_scale=True)
    for i in range(0, max_rows, cfg.batch_rows):
        tokens = torch.from_numpy(rows[i : min(i + cfg.batch_rows, max_rows)].astype(np.int64)).to(device)
        shape = (*tokens.shape, -1)
        if i < ce_rows:
            grabbed = {}

            def grab(x, hook):  # noqa: ARG001
                grabbed["x"] = x
                return x

            logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)])
            x = grabbed["x"].reshape(-1, grabbed["x"].shape[-1]).float()
            x_hat, f = sae(x)
            spliced = {
                "clean": logits,
                "sae": model.run_with_hooks(tokens, fwd_hooks=[(hook, _splice(lambda a: x_hat.reshape(shape).to(a.dtype)))]),
                "zero": model.run_with_hooks(tokens, fwd_hooks=[(hook, _splice(torch.zeros_like))]),
                "mean": model.run_with_hooks(tokens, fwd_hooks=[(hook, _splice(lambda a: mean.to(a.dtype).expand_as(a)))]),
            }
            for k, lg in spliced.items():
                s.ce[k] += token_ce(lg, tokens).double().sum().item()
            s.ce_n += tokens.shape[0] * (n_ctx - 1)
        else:
            x = hook_activations(model, tokens, hook, layer).reshape(-1, mean.shape[0]).float()
            x_hat, f = sae(x)
        s.add_recon(x, x_hat, f)
        bar.update(tokens.numel())
    bar.close()
    seconds = time.perf_counter() - start
    return summarize(s, seconds, cfg.ultra_low_threshold), {"fired": s.fired.numpy(), "act_sum": s.act_sum.numpy()}


def summarize(s: Sums, seconds: float, ultra_low: float = 1e-4) -> dict:
    ce = {k: v / s.ce_n for k, v in s.ce.items()}
    freq = s.fired.numpy() / s.n
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero"],
        "ce_mean_ablation": ce["mean"],
        "ce_recovered_zero": ce_recovered(ce["clean"], ce["sae"], ce["zero"]),
        "ce_recovered_mean": ce_recovered(ce["clean"], ce["sae"], ce["mean"]),
        "mean_ablation_recovered_zero": ce_recovered(ce["clean"], ce["mean"], ce["zero"]),
        "ce_eval_tokens": s.ce_n,
        "mse": s.sse / s.n,
        "explained_variance": explained_variance(s.sse, s.sum_sq, s.sum_x, s.n),
        "l0": s.l0 / s.n,
        "l2_ratio": s.l2_ratio / max(1, s.l2_n),
        "frac_dead": float((freq == 0).mean()),
        "frac_ultra_low": float((freq < ultra_low).mean()),
        "frac_dense": float((freq > 1e-2).mean()),
        "eval_tokens": s.n,
        "eval_seconds": seconds,
        "eval_tokens_per_s": s.n / seconds,
    }
