"""The reconstruction metrics: one definition each, one streaming implementation for every caller.

evaluate (the root pipeline), the questions' eval set and the synthetic pipeline's recovery scores all
accumulate :class:`ReconSums` over their tokens and read :meth:`ReconSums.result`, so a metric added
here reaches all three. Definitions (docs/metrics.md, "Reconstruction metrics"):

* ``mse``: mean over tokens of Σ_dims (x̂ − x)²;
* ``explained_variance``: 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the tokens (centred);
* ``l0``: mean number of nonzero features per token;
* ``l2_ratio``: mean over tokens of ‖x̂‖ / ‖x‖ (the reconstruction's norm shrinkage; not the synthetic
  pipeline's per-feature ``shrinkage``); tokens with x = 0 have no ratio and are left out of the mean (0 when no
  token has one);
* ``fired`` / ``act_sum``: per feature, tokens on which it fired (f > 0) and the sum of its activations.

Sums are float64, taken per batch, so a streamed result does not depend on the batch's precision. A caller that
reports the MSE alone (the analysis pass's top-k rows) accumulates :class:`SquaredError`, the part of ReconSums
that the MSE is, through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def ce_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """(CE_ablated - CE_sae) / (CE_ablated - CE_clean): 1 = perfect splice, 0 = as bad as ablation."""
    return (ce_ablated - ce_sae) / (ce_ablated - ce_clean)


def explained_variance(sse: float, sum_sq: float, sum_x: np.ndarray, n: int) -> float:
    """1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖², with the centred denominator from streamed sums.

    Σ‖x - μ‖² = Σ‖x‖² - n‖μ‖² where μ = Σx / n. NaN when that is 0 (every token the same).
    """
    mu = np.asarray(sum_x, dtype=np.float64) / n
    total = sum_sq - n * float(mu @ mu)
    return 1.0 - sse / total if total > 0 else float("nan")  # every token the same: no variance to explain


def l2_ratios(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-token ‖x̂‖ / ‖x‖ (B,); tokens with x = 0 are dropped."""
    nx = x.norm(dim=-1)
    keep = nx > 0
    return x_hat.norm(dim=-1)[keep] / nx[keep]


def frequency_fractions(freq: np.ndarray, ultra_low: float, dense: float) -> dict:
    """Fractions of features dead (never fired), ultra-low (freq < ultra_low, dead included) and dense (> dense)."""
    return {
        "frac_dead": float((freq == 0).mean()),
        "frac_ultra_low": float((freq < ultra_low).mean()),
        "frac_dense": float((freq > dense).mean()),
    }


@dataclass
class SquaredError:
    """Running float64 sum of Σ_dims (x̂ − x)² over tokens: ``mse`` is ReconSums' ``mse`` without the rest."""

    n: int = 0
    sse: float = 0.0

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> SquaredError:
        """Add tokens x (N, d_in) and their reconstruction x̂ (N, d_in)."""
        self.n += len(x)
        self.sse += (x_hat - x).double().pow(2).sum().item()
        return self

    def mse(self) -> float:
        """Mean over the tokens added of Σ_dims (x̂ − x)²."""
        return self.sse / self.n


@dataclass
class ReconSums(SquaredError):
    """Running float64 sums of the reconstruction metrics over tokens: ``add`` batches, read ``result``. Its ``add``
    takes the features as well (a SquaredError whose sums it extends, not a drop-in for one's ``add``)."""

    sum_sq: float = 0.0
    sum_x: np.ndarray | None = None
    l0: float = 0.0
    l2_ratio: float = 0.0
    l2_n: int = 0
    fired: torch.Tensor | None = None
    act_sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> ReconSums:
        """Add tokens x (N, d_in), their reconstruction x̂ (N, d_in) and features f (N, d_sae)."""
        super().add(x, x_hat)
        x64 = x.double()
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
        return self

    def freq(self) -> np.ndarray:
        """(d_sae,) fraction of the tokens on which each feature fired."""
        return self.fired.numpy() / self.n

    def result(self) -> dict:
        """mse, explained_variance, l0, l2_ratio and the token counts (module docstring)."""
        return {
            "mse": self.mse(),
            "explained_variance": explained_variance(self.sse, self.sum_sq, self.sum_x, self.n),
            "l0": self.l0 / self.n,
            "l2_ratio": self.l2_ratio / max(1, self.l2_n),
            "eval_tokens": self.n,
        }


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> dict:
    """:meth:`ReconSums.result` of one batch of tokens."""
    return ReconSums().add(x, x_hat, f).result()


def training_share(ce: float, tokens, losses) -> float | None:
    """The share of the LM's training at which the plain LM had loss ``ce`` (docs/metrics.md, "Compute
    equivalent"): from a curve of eval losses ``losses`` after ``tokens`` training tokens (increasing, the last
    being the whole run), the first point where the loss reached so far (its running minimum) is <= ce,
    interpolated linearly in tokens from the point before, over the run's tokens. None when ``ce`` is below the
    lowest loss on the curve (the spliced model would be better than the LM), above its first point, or not
    finite."""
    t = np.asarray(tokens, dtype=np.float64)
    best = np.minimum.accumulate(np.asarray(losses, dtype=np.float64))
    if len(t) < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("training_share: need at least two points with strictly increasing tokens")
    if not np.isfinite(ce) or ce < best[-1] or ce > best[0]:
        return None
    i = int(np.argmax(best <= ce))
    if i == 0:
        return float(t[0] / t[-1])
    frac = (best[i - 1] - ce) / (best[i - 1] - best[i])  # best[i-1] > ce >= best[i]
    return float((t[i - 1] + frac * (t[i] - t[i - 1])) / t[-1])
