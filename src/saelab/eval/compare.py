"""Cross-seed comparison of SAEs trained on the same activations (the matrix of random seeds; docs/metrics.md).

Each seed initialises its SAE and reads the cache in its own order, so agreement between
seeds is not an artefact of shared batches. For each pair of seeds (a, b):
  * best-match decoder cosine: for every feature of a, max_j cos(W_dec_a[i], W_dec_b[j]);
  * a one-to-one matching that maximises the summed cosine (Hungarian; greedy above
    ``hungarian_max`` features) and the share of features matched above 0.9 and 0.7,
    also within a's ultra-low and non-ultra-low features;
  * the cosine between the two ultra-low clusters' mean encoder directions (the reference
    found 0.96 on gelu-1l), and the same after removing the mean activation direction from both;
  * whether matched features (cos > 0.7) also match on firing frequency: Spearman
    correlation of their frequencies and the median |log10 ratio|.
For each seed, baselines for its ultra-low direction: its cosine with the mean activation,
with b_dec, and the largest |cosine| with the top principal components of the activations.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment

from saelab.analysis.weights import cluster_sameness, unit
from saelab.data.hooks import activation, covered_positions


def decoder_cosines(W_dec_a: torch.Tensor, W_dec_b: torch.Tensor) -> torch.Tensor:
    """(d_sae_a, d_sae_b) cosines between decoder rows."""
    return unit(W_dec_a.double()) @ unit(W_dec_b.double()).T


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
    """Mean encoder vector of the ultra-low features (the analysis's cluster mean), or None without any."""
    ultra = torch.from_numpy(freq < threshold)
    return cluster_sameness(W_enc.T[ultra].double())[0] if ultra.any() else None


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
    ultra_a = a["freq"][rows] < threshold
    for name, part in (("ultra_low", ultra_a), ("non_ultra_low", ~ultra_a)):
        if part.any():  # share of a's features of that kind matched one-to-one above 0.9
            m[f"share_matched_above_0.9_{name}"] = float((matched[part] > 0.9).mean())
    da, db = (
        ultra_low_direction(a["W_enc"], a["freq"], threshold),
        ultra_low_direction(b["W_enc"], b["freq"], threshold),
    )
    if da is not None and db is not None:
        m["ultra_low_direction_cos"] = cosine(da, db)
    good = matched > 0.7
    if good.sum() >= 3:
        fa, fb = a["freq"][rows[good]], b["freq"][cols[good]]
        m["matched_freq_spearman"] = float(stats.spearmanr(fa, fb).statistic)
        both = (fa > 0) & (fb > 0)
        m["matched_log10_freq_ratio_median"] = (
            float(np.median(np.abs(np.log10(fa[both] / fb[both])))) if both.any() else 0.0
        )
    return m, best


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(unit(u.double()) @ unit(v.double()))


def without(v: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``v`` with its component along ``direction`` removed."""
    d = unit(direction.double())
    return v.double() - (v.double() @ d) * d


@torch.no_grad()
def frequencies(
    model,
    saes: list,
    rows: np.ndarray,
    hook: str,
    batch_rows: int,
    device,
    exclude_token: int | None = None,
    n_components: int = 5,
) -> tuple[list[np.ndarray], dict]:
    """Firing frequency of every SAE's features on the covered positions of ``rows``, from one LM
    pass per batch; also the activations' mean and top ``n_components`` principal directions."""
    d = saes[0].d_in
    counts = [[] for _ in saes]  # per batch, int64: exact at any number of tokens
    total, gram, n = torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64), 0
    for i in range(0, len(rows), batch_rows):
        tokens = torch.from_numpy(rows[i : i + batch_rows].astype(np.int64)).to(device)
        x = activation(model, tokens, hook).reshape(-1, d).float()[covered_positions(tokens, exclude_token).reshape(-1)]
        for acc, sae in zip(counts, saes):
            acc.append((sae.encode(x) > 0).sum(0))
        x64 = x.double().cpu()
        total, gram, n = total + x64.sum(0), gram + x64.T @ x64, n + len(x)
    mean = total / n
    cov = gram / n - torch.outer(mean, mean)
    pcs = torch.linalg.eigh(cov).eigenvectors.flip(-1)[:, :n_components].T  # (n_components, d), largest first
    return [torch.stack(c).sum(0).double().cpu().numpy() / n for c in counts], {"mean": mean, "pcs": pcs}


def direction_baselines(direction: torch.Tensor, b_dec: torch.Tensor, acts: dict) -> dict:
    """How an ultra-low encoder direction relates to what the reference ruled out on gelu-1l."""
    pcs = acts["pcs"].double()
    u = direction.double() / direction.double().norm().clamp_min(1e-12)
    return {
        "ultra_low_dir_cos_mean_activation": cosine(direction, acts["mean"]),
        "ultra_low_dir_cos_b_dec": cosine(direction, b_dec),
        "ultra_low_dir_max_abs_cos_top_pcs": float((pcs @ u).abs().max()),
    }


def compare_all(
    saes: dict[int, dict], hungarian_max: int, threshold: float, acts: dict | None = None
) -> tuple[dict, dict]:
    """Flat metrics ``seed<a>_vs_seed<b>_<name>`` for every pair (and ``seed<a>_<baseline>`` per seed when
    ``acts`` holds the activations' mean and principal directions), and best-match cosines per pair for plots."""
    metrics, best = {}, {}
    for seed, sae in sorted(saes.items()):
        direction = ultra_low_direction(sae["W_enc"], sae["freq"], threshold)
        if acts is not None and direction is not None:
            metrics |= {f"seed{seed}_{k}": v for k, v in direction_baselines(direction, sae["b_dec"], acts).items()}
    for sa, sb in itertools.combinations(sorted(saes), 2):
        m, b = compare_pair(saes[sa], saes[sb], hungarian_max, threshold)
        da = ultra_low_direction(saes[sa]["W_enc"], saes[sa]["freq"], threshold)
        db = ultra_low_direction(saes[sb]["W_enc"], saes[sb]["freq"], threshold)
        if acts is not None and da is not None and db is not None:
            # Agreement left once the mean activation direction is taken out of both: what the mean cannot explain.
            m["ultra_low_direction_cos_without_mean_activation"] = cosine(
                without(da, acts["mean"]), without(db, acts["mean"])
            )
        metrics |= {f"seed{sa}_vs_seed{sb}_{k}": v for k, v in m.items()}
        best[(sa, sb)] = b
    return metrics, best
