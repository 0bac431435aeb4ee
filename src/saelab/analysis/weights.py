"""Analyses of the weights alone: pure functions, each checked against a hand-built SAE in the tests.

Shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], freq [d_sae],
W_out [d_mlp, d_model], W_U [d_model, d_vocab].
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def unit(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``v`` scaled to unit norm along ``dim`` (zero vectors stay zero)."""
    return v / v.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def cluster_sameness(vectors: torch.Tensor, threshold: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cosine of each row of ``vectors`` (n, d) with the rows' mean; share above ``threshold``.

    Returns (mean direction (d,), cosines (n,), share).
    """
    mean = vectors.mean(0)
    cos = unit(vectors) @ unit(mean)
    return mean, cos, float((cos > threshold).float().mean()) if len(cos) else float("nan")


def enc_dec_cosine(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """cos(W_enc[:, i], W_dec[i]) for every feature: (d_sae,)."""
    return (unit(W_enc.T) * unit(W_dec)).sum(-1)


def neuron_sparsity(W_dec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fve_top_1 and fve_next_9 of each decoder row: sorted squared weights over their sum."""
    s = W_dec.pow(2).sort(dim=-1, descending=True).values
    s = s / s.sum(-1, keepdim=True).clamp_min(1e-30)
    return s[:, 0], s[:, 1:10].sum(-1)


def sparsity_class(fve_top_1: torch.Tensor, fve_next_9: torch.Tensor) -> np.ndarray:
    """'1-sparse' if top_1 > 0.35 and next_9 < 0.1; 'dense' if top_1 + next_9 < 0.35; else '10-ish'."""
    one = (fve_top_1 > 0.35) & (fve_next_9 < 0.1)
    dense = (fve_top_1 + fve_next_9) < 0.35
    return np.where(one.numpy(), "1-sparse", np.where(dense.numpy(), "dense", "10-ish"))


def excess_kurtosis(rows: torch.Tensor) -> np.ndarray:
    """Excess kurtosis (Fisher, Gaussian = 0) of each row over its entries."""
    return stats.kurtosis(rows.double().numpy(), axis=1, fisher=True)


def gaussian_kurtosis_baseline(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return excess_kurtosis(torch.randn(*shape, generator=g))


def null_space_share(vectors: torch.Tensor, W_out: torch.Tensor) -> torch.Tensor:
    """Share of ‖v‖² (v in neuron space, rows of ``vectors``) that W_out maps to zero.

    W_out is [d_mlp, d_model]; v·W_out = 0 exactly when v is orthogonal to W_out's
    columns, so the share is 1 - ‖Qᵀv‖²/‖v‖² with Q an orthonormal basis of those
    columns. A random v scores about 1 - d_model/d_mlp.
    """
    Q, _ = torch.linalg.qr(W_out.double())  # (d_mlp, d_model)
    v = vectors.double()
    inside = (v @ Q).pow(2).sum(-1)
    return (1 - inside / v.pow(2).sum(-1).clamp_min(1e-30)).float()


def de_projection(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """W_enc[:, i] · W_dec[i] for every feature, un-normalised (docs/metrics.md, "D/E projection").

    The encoder's gain along the feature's own decoder direction: about 1 for a feature that
    autoencodes its direction. Not the encoder/decoder cosine (:func:`enc_dec_cosine`).
    """
    return (W_enc.T * W_dec).sum(-1)


def pairwise_cosine_stats(W_dec: torch.Tensor) -> tuple[float, float, int]:
    """Mean and variance of cos(W_dec[i], W_dec[j]) over pairs i < j; and the number of rows."""
    n = len(W_dec)
    if n < 2:
        return float("nan"), float("nan"), n
    u = unit(W_dec.double())
    c = u @ u.T
    off = c[torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)]
    return float(off.mean()), float(off.var(unbiased=False)), n


def logit_effects(
    W_dec: torch.Tensor, W_U: torch.Tensor, W_out: torch.Tensor | None = None, ln_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Direct logit effect of each feature through the final LayerNorm: (d_sae, d_vocab).

    u = centre(W_dec · W_out) · diag(ln_weight) · W_U for neuron-space hooks (no W_out for
    residual ones). As TransformerLens's ``fold_ln``: the LN's learned scale is folded into
    W_U, and its centring (subtracting the mean over d_model) is applied to the written
    direction; the per-token 1/RMS factor is a positive scalar, which changes no skewness
    or kurtosis. ``ln_weight`` None skips both (an LN-free model).
    """
    resid = W_dec @ W_out if W_out is not None else W_dec  # (d_sae, d_model)
    if ln_weight is None:
        return resid @ W_U
    resid = resid - resid.mean(-1, keepdim=True)
    return resid @ (ln_weight[:, None] * W_U)


def moments(u: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean, std, skewness and excess kurtosis of each row of ``u`` over the vocabulary."""
    a = u.double().numpy()
    return {
        "logit_mean": a.mean(1),
        "logit_std": a.std(1),
        "logit_skew": stats.skew(a, axis=1),
        "logit_kurtosis": stats.kurtosis(a, axis=1, fisher=True),
    }
