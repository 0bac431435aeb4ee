"""Cross-seed comparison of SAEs trained on the same activations (the seed matrix).

For each pair of seeds (a, b):
  * best-match decoder cosine: for every feature of a, max_j cos(W_dec_a[i], W_dec_b[j]);
  * a one-to-one matching that maximises the summed cosine (Hungarian; greedy above
    ``hungarian_max`` features) and the share of features matched above 0.9 and 0.7;
  * the cosine between the two ultra-low clusters' mean encoder directions (the seed
    found 0.96 on gelu-1l);
  * whether matched features (cos > 0.7) also match on firing frequency: Spearman
    correlation of their frequencies and the median |log10 ratio|.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

from saelab.activations import hook_activations


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def decoder_cosines(W_dec_a: torch.Tensor, W_dec_b: torch.Tensor) -> torch.Tensor:
    """(d_sae_a, d_sae_b) cosines between decoder rows."""
    return unit_rows(W_dec_a.double()) @ unit_rows(W_dec_b.double()).T


def greedy_matching(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching taking the largest remaining cosine first (a lower bound on Hungarian's sum)."""
    order = np.argsort(-cos, axis=None, kind="stable")
    used_a, used_b, rows, cols = set(), set(), [], []
    for flat in order:
        i, j = divmod(int(flat), cos.shape[1])
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            rows.append(i)
            cols.append(j)
            if len(rows) == min(cos.shape):
                break
    return np.array(rows), np.array(cols)


def match(cos: np.ndarray, hungarian_max: int) -> tuple[np.ndarray, np.ndarray, str]:
    if max(cos.shape) <= hungarian_max:
        r, c = linear_sum_assignment(-cos)
        return r, c, "hungarian"
    r, c = greedy_matching(cos)
    return r, c, "greedy"


def ultra_low_direction(W_enc: torch.Tensor, freq: np.ndarray, threshold: float) -> torch.Tensor | None:
    ultra = torch.from_numpy(freq < threshold)
    return W_enc.T[ultra].double().mean(0) if ultra.any() else None


def compare_pair(a: dict, b: dict, hungarian_max: int, threshold: float) -> tuple[dict, np.ndarray]:
    """Metrics for one pair; ``a`` and ``b`` hold W_enc, W_dec and freq. Returns (metrics, best-match cosines of a)."""
    cos = decoder_cosines(a["W_dec"], b["W_dec"]).numpy()
    best = cos.max(1)
    rows, cols, method = match(cos, hungarian_max)
    matched = cos[rows, cols]
    m = {
        "best_cos_median": float(np.median(best)),
        "best_cos_mean": float(best.mean()),
        "share_best_above_0.9": float((best > 0.9).mean()),
        "share_matched_above_0.9": float((matched > 0.9).sum() / len(best)),
        "share_matched_above_0.7": float((matched > 0.7).sum() / len(best)),
        "matching_exact": 1.0 if method == "hungarian" else 0.0,
    }
    da, db = ultra_low_direction(a["W_enc"], a["freq"], threshold), ultra_low_direction(b["W_enc"], b["freq"], threshold)
    if da is not None and db is not None:
        m["ultra_low_direction_cos"] = float(torch.dot(da, db) / (da.norm() * db.norm()).clamp_min(1e-12))
    good = matched > 0.7
    if good.sum() >= 3:
        fa, fb = a["freq"][rows[good]], b["freq"][cols[good]]
        m["matched_freq_spearman"] = float(stats.spearmanr(fa, fb).statistic)
        both = (fa > 0) & (fb > 0)
        m["matched_log10_freq_ratio_median"] = float(np.median(np.abs(np.log10(fa[both] / fb[both])))) if both.any() else 0.0
    return m, best


@torch.no_grad()
def frequencies(model, saes: list, rows: np.ndarray, hook: str, layer: int, batch_rows: int, device) -> list[np.ndarray]:
    """Firing frequency of every SAE's features on ``rows``, from one LM pass per batch."""
    fired = [torch.zeros(s.d_sae, dtype=torch.float64, device=device) for s in saes]
    for i in range(0, len(rows), batch_rows):
        tokens = torch.from_numpy(rows[i : i + batch_rows].astype(np.int64)).to(device)
        x = hook_activations(model, tokens, hook, layer).reshape(-1, saes[0].d_in).float()
        for acc, sae in zip(fired, saes):
            acc += (sae.encode(x) > 0).sum(0).double()
    return [f.cpu().numpy() / rows.size for f in fired]


def compare_all(saes: dict[int, dict], hungarian_max: int, threshold: float) -> tuple[dict, dict]:
    """Flat metrics ``seed<a>_vs_seed<b>_<name>`` for every pair, and best-match cosines per pair for plots."""
    metrics, best = {}, {}
    for sa, sb in itertools.combinations(sorted(saes), 2):
        m, b = compare_pair(saes[sa], saes[sb], hungarian_max, threshold)
        metrics |= {f"seed{sa}_vs_seed{sb}_{k}": v for k, v in m.items()}
        best[(sa, sb)] = b
    return metrics, best
