"""One function per open question of the seed (docs/questions.md): each takes trained runs and a
fixed eval sample (saelab.questions.EvalSet) and returns a flat dict of numbers, plus tables
for CSV. The ``answer`` stage (stages/q_answer.py) calls them and writes the results.

Definitions used throughout (docs/questions.md, "Shared definitions"): a feature is ultra-low
when its firing frequency on the run's eval sample is below ``evaluate.ultra_low_threshold``
(dead features included, as in docs/metrics.md); the ultra-low direction is the mean encoder
column of those features (saelab.compare.ultra_low_direction); CE recovered is against zero
ablation on the same eval sample.
"""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch
from scipy import stats

from research.questions.experiment import density_grid
from saelab.analysis.weights import (
    cluster_sameness,
    enc_dec_cosine,
    logit_effects,
    moments,
    neuron_sparsity,
    null_space_share,
    unit,
)
from saelab.data.hooks import capture
from saelab.eval.compare import cosine, decoder_cosines, match, ultra_low_direction

HEADLINE = ("ce_recovered_zero", "mse", "l0", "l2_ratio", "frac_ultra_low", "frac_dead")


def summary(score: dict, threshold: float) -> dict:
    """The headline numbers of a score (EvalSet.score) with the frequency fractions."""
    freq = score["freq"]
    out = {k: score[k] for k in ("ce_recovered_zero", "ce_sae", "mse", "l0", "l2_ratio") if k in score}
    return out | {
        "frac_ultra_low": float((freq < threshold).mean()),
        "frac_dead": float((freq == 0).mean()),
        "n_features": int(len(freq)),
    }


def cluster_stats(sae, freq: np.ndarray, threshold: float) -> dict:
    """Share of ultra-low features, and how alike their encoder columns are (cos with their mean),
    over all ultra-low features and over the live ones (frequency > 0 on the eval sample)."""
    ultra = freq < threshold
    out = {"frac_ultra_low": float(ultra.mean()), "n_ultra_low": int(ultra.sum())}
    for tag, members in (("", ultra), ("_live", ultra & (freq > 0))):  # _live: dead features left out
        out[f"n_ultra_low{tag}"] = int(members.sum())
        if members.sum() >= 2:
            _, cos, share = cluster_sameness(sae.W_enc.detach().T[torch.from_numpy(members)].double())
            out |= {
                f"cluster{tag}_enc_cos_median": float(cos.median()),
                f"cluster{tag}_enc_share_cos_above_0.95": share,
            }
    return out


# ------------------------------------------------------------------ question 1


@torch.no_grad()
def direction_origin(
    base,
    freq,
    ev,
    cache_mean: torch.Tensor,
    W_out: torch.Tensor | None,
    grad: dict | None,
    threshold: float,
    n_components: int = 5,
) -> tuple[dict, torch.Tensor]:
    """Cosines of the ultra-low direction u with candidate explanations. Returns (metrics, u)."""
    u = ultra_low_direction(base.W_enc.detach(), freq, threshold)
    if u is None:
        return {"n_ultra_low": 0}, None
    u = unit(u.double())
    d = u.numel()
    gram, total, n = torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0
    pos1, last = [], []
    for x, c in zip(ev.x, ev.covered):
        flat = x.reshape(-1, d)[c.reshape(-1)].double().cpu()
        gram += flat.T @ flat
        total += flat.sum(0)
        n += len(flat)
        pos1.append(x[:, 1].double().cpu())
        last.append(x[:, -1].double().cpu())
    mean = total / n
    top_sv = torch.linalg.eigh(gram / n).eigenvectors.flip(-1)[:, :n_components].T  # uncentred: singular vectors
    top_pc = torch.linalg.eigh(gram / n - torch.outer(mean, mean)).eigenvectors.flip(-1)[:, :n_components].T
    bos = capture(ev.model, ev.tokens[0][:1, :1], ev.hook)[1][0, 0].double().cpu()  # position 0 sees only BOS
    m = {
        "n_ultra_low": int((freq < threshold).sum()),
        "cos_mean_activation_eval": cosine(u, mean),
        "cos_mean_activation_cache": cosine(u, cache_mean),
        "cos_b_dec": cosine(u, base.b_dec.detach()),
        "cos_bos_activation": cosine(u, bos),
        "cos_position_1_mean": cosine(u, torch.cat(pos1).mean(0)),
        "cos_last_position_mean": cosine(u, torch.cat(last).mean(0)),
        "max_abs_cos_top_singular_vectors": float((top_sv @ u).abs().max()),
        "max_abs_cos_top_pcs": float((top_pc @ u).abs().max()),
        "abs_cos_top_singular_vectors": [float(v) for v in (top_sv @ u).abs()],
        "random_abs_cos_scale": float(1 / np.sqrt(d)),
        "share_in_span_mean_b_dec": float(1 - _without(u, [mean, base.b_dec.detach()]).pow(2).sum()),
    }
    if W_out is not None:
        m["null_space_share"] = float(null_space_share(u[None].float(), W_out)[0])
        m["null_space_share_random"] = 1 - W_out.shape[1] / W_out.shape[0]
    if grad is not None:
        ultra = torch.from_numpy(freq < threshold) & (grad["steps"] > 0)
        descent = -grad["grad_sum"].double()  # the direction gradient descent pushed each encoder column
        g_dir = unit(unit(descent.T[ultra]).mean(0))
        per = (unit(descent.T) * unit(base.W_enc.detach().T.double())).sum(-1)
        m |= {
            "cos_mean_descent_direction": float(g_dir @ u),
            "cos_mean_descent_direction_mean_activation": cosine(g_dir, mean),
            "descent_vs_own_encoder_cos_median_ultra_low": float(per[ultra].median()),
            "descent_vs_own_encoder_cos_median_other": float(per[~torch.from_numpy(freq < threshold)].median()),
        }
    return m, u


def _without(v: torch.Tensor, directions: list[torch.Tensor]) -> torch.Tensor:
    """``v`` with the span of ``directions`` removed (Gram-Schmidt)."""
    Q, _ = torch.linalg.qr(torch.stack([d.double() for d in directions], 1))
    v = v.double()
    return v - Q @ (Q.T @ v)


@torch.no_grad()
def top_projections(ev, u: torch.Tensor, k: int) -> list[tuple[float, int]]:
    """The ``k`` eval tokens with the largest x·u: [(projection, global index row * n_ctx + pos)]."""
    best: list[tuple[float, int]] = []
    offset = 0
    for x, c in zip(ev.x, ev.covered):
        p = (x.double().cpu() @ u).masked_fill(~c.cpu(), -np.inf)  # (B, T)
        vals, idx = p.reshape(-1).topk(min(k, p.numel()))
        best += [(float(v), offset * x.shape[1] + int(i)) for v, i in zip(vals, idx)]
        offset += x.shape[0]
    return sorted(best, reverse=True)[:k]


# ------------------------------------------------------------------ question 4


def density_curve(density: pa.Table, threshold: float) -> list[dict]:
    """Per interval: tokens seen, share of features below ``threshold`` (ultra-low) and at 0 fires."""
    t, f, n = (np.asarray(density[c]) for c in ("tokens", "fires", "interval_tokens"))
    out = []
    for tok in np.unique(t):
        sel = t == tok
        rate = f[sel] / n[sel]
        out.append(
            {
                "tokens": int(tok),
                "frac_ultra_low": float((rate < threshold).mean()),
                "frac_zero_fires": float((f[sel] == 0).mean()),
                "interval_tokens": int(n[sel][0]),
            }
        )
    return out


def watch(times: np.ndarray, fires: np.ndarray, width: np.ndarray, since: dict[int, int], ultra_low: float) -> dict:
    """Each feature i watched over the density intervals that end after ``since[i]``: its fires in
    the first and the second half of them (equal halves: the middle interval of an odd count is left
    out), the Spearman correlation of fires with time, whether any of them reaches ``ultra_low``
    (revived) and whether all are silent."""
    per = []
    for i, c in since.items():
        later = times > c
        if later.sum() < 2:
            continue
        fi, wi = fires[i, later], width[later]
        half = len(fi) // 2
        rho = stats.spearmanr(np.arange(len(fi)), fi).statistic if len(fi) >= 3 and fi.std() > 0 else np.nan
        per.append(
            (
                fi[:half].sum(),
                fi[len(fi) - half :].sum(),
                rho,
                (fi / wi).max() >= ultra_low,
                fi.sum() == 0,
                fi[:half].mean(),
                fi[len(fi) - half :].mean(),
            )
        )
    if not per:
        return {"n_watched": 0}
    first, second, rho, revived, silent, mean1, mean2 = map(np.array, zip(*per))
    return {
        "n_watched": len(per),
        "share_fewer_fires_second_half": float((second < first).mean()),
        "share_more_fires_second_half": float((second > first).mean()),
        "share_silent_throughout": float(silent.mean()),
        "spearman_time_fires_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
        "share_negative_trend": float((rho < 0).mean()),
        "share_revived_above_ultra_low": float(revived.mean()),
        "fires_first_half_total": int(first.sum()),
        "fires_second_half_total": int(second.sum()),
        "median_fires_per_interval_first_half": float(np.median(mean1)),
        "median_fires_per_interval_second_half": float(np.median(mean2)),
    }


def held_dying(
    density: pa.Table, held: np.ndarray, checks: list[int], window: int, threshold: float, ultra_low: float
) -> tuple[dict, list[dict]]:
    """The held-out (never resampled) features that a resampling check would have resampled: at
    some check (training token in ``checks``) their rate over the density intervals ending in the
    ``window`` tokens before it was below ``threshold``. Each is watched from its first such check
    on (``watch``). ``control``: the same measures for the held features never found dying, each
    watched from the check that found the most dying features."""
    times, fires, width = density_grid(density)
    since = {}
    for c in checks:
        inside = (times > c - window) & (times <= c)
        if not inside.any():
            continue
        rate = fires[:, inside].sum(1) / width[inside].sum()
        for i in held:
            if i not in since and rate[i] < threshold:
                since[int(i)] = c
    m = {"n_held": int(len(held)), "n_held_dying": len(since), "checks": [int(c) for c in checks]}
    m |= watch(times, fires, width, since, ultra_low)
    if since:
        busiest = max(set(since.values()), key=list(since.values()).count)
        m["control"] = {
            "watched_from": int(busiest),
            **watch(times, fires, width, {int(i): busiest for i in held if int(i) not in since}, ultra_low),
        }
    rows = [
        {"feature": i, "dying_since": c, "fires_later": " ".join(map(str, fires[i, times > c].tolist()))}
        for i, c in since.items()
        if (times > c).sum() >= 2
    ]
    return m, rows


# ------------------------------------------------------------------ question 6


@torch.no_grad()
def firing_sets(sae, ev, features: np.ndarray) -> list[set]:
    """The eval tokens (global covered index) on which each of ``features`` fires."""
    sets = [set() for _ in features]
    idx = torch.from_numpy(features)
    offset = 0
    for x in ev.activations():
        f = sae.encode(x)[:, idx] > 0
        tok, j = f.nonzero(as_tuple=True)
        for a, b in zip((tok + offset).tolist(), j.tolist()):
            sets[b].add(a)
        offset += len(x)
    return sets


def superset_shares(sets: list[set], bias: np.ndarray, seed: int = 0) -> dict:
    """Over pairs of features that both fire: how often the lower-bias one's firing set contains the
    other's, the reverse, and the same for sets of the same sizes drawn at random from their union."""
    live = [i for i, s in enumerate(sets) if s]
    universe = np.array(sorted(set().union(*[sets[i] for i in live]))) if live else np.zeros(0, int)
    rng = np.random.default_rng(seed)
    rand = {i: set(rng.choice(universe, len(sets[i]), replace=False).tolist()) for i in live}
    lower = higher = nested_random = pairs = 0
    for a_pos, a in enumerate(live):
        for b in live[a_pos + 1 :]:
            lo, hi = (a, b) if bias[a] < bias[b] else (b, a)
            pairs += 1
            lower += sets[lo] >= sets[hi]
            higher += sets[hi] >= sets[lo]
            nested_random += (rand[lo] >= rand[hi]) or (rand[hi] >= rand[lo])
    div = max(1, pairs)
    return {
        "n_features_firing": len(live),
        "n_pairs": pairs,
        "share_lower_bias_superset": lower / div,
        "share_higher_bias_superset": higher / div,
        "share_nested_random_sets": nested_random / div,
        "median_fires_per_feature": float(np.median([len(sets[i]) for i in live])) if live else 0.0,
    }


# ------------------------------------------------------------------ questions 9 and 10


def drop_lowest(k: int):
    """Zero the k smallest non-zero activations of each row."""

    def transform(f: torch.Tensor) -> torch.Tensor:
        if k <= 0:
            return f
        masked = f.masked_fill(f <= 0, float("inf"))
        idx = masked.topk(min(k, f.shape[-1]), dim=-1, largest=False).indices
        return f.scatter(-1, idx, 0.0)

    return transform


def keep_top(k: int):
    from saelab.analysis.passes import topk_mask

    return lambda f: topk_mask(f, k)


def finetune(sae, batches, n_tokens: int, lr: float, mode: str):
    """Freeze the encoder (so every feature's firing, hence L0, stays as it was) and fit, by MSE on
    training batches, either the decoder rows (``decoder``: W_dec, norms free; b_dec stays, since
    the encoder reads x - b_dec) or one scalar per feature (``scale``: x_hat = (f * s) W_dec + b_dec).
    Returns the fitted SAE (a copy)."""
    out = copy.deepcopy(sae).float()
    for p in out.parameters():
        p.requires_grad_(False)
    if mode == "decoder":
        params = [out.W_dec]
        for p in params:
            p.requires_grad_(True)
    elif mode == "scale":
        out.scale = torch.nn.Parameter(torch.ones(out.d_sae))
        params = [out.scale]
    else:
        raise ValueError(f"finetune mode {mode!r}: decoder | scale")
    opt = torch.optim.Adam(params, lr=lr)
    done = 0
    while done < n_tokens:
        x = next(batches).float()
        with torch.no_grad():
            f = out.encode(x)
        if mode == "scale":
            f = f * out.scale
        loss = (out.decode(f) - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += len(x)
    if mode == "scale":  # fold the scalars into the decoder rows: the same reconstructions, a plain SAE
        with torch.no_grad():
            out.W_dec.mul_(out.scale[:, None])
        del out.scale
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# ------------------------------------------------------------------ question 11


@torch.no_grad()
def splitting(
    narrow, wide, ev, split_cos: float, live_narrow: np.ndarray | None = None, live_wide: np.ndarray | None = None
) -> tuple[dict, list[dict]]:
    """Each live wide feature is a child of its best-matching live narrow feature (decoder cos) when
    that cos is >= ``split_cos`` (live: the masks, e.g. not ultra-low; all when None). For narrow
    features with >= 2 children, on the eval sample: coverage (share of the narrow feature's firings
    where some child fires), exclusivity (share of those where exactly one child fires; undefined
    without coverage) and spill (share of the children's firings where the narrow feature is
    silent). A partition is coverage and exclusivity high, spill low."""
    cos = decoder_cosines(wide.W_dec.detach(), narrow.W_dec.detach())  # (d_wide, d_narrow)
    if live_narrow is not None:
        cos[:, ~torch.from_numpy(live_narrow)] = -2.0
    best, parent = cos.max(1)
    child = best >= split_cos
    if live_wide is not None:
        child &= torch.from_numpy(live_wide)
    n_children = torch.bincount(parent[child], minlength=narrow.d_sae)
    kids = child.nonzero().squeeze(-1)
    fn_n = inter = union = one = torch.zeros(narrow.d_sae, dtype=torch.float64)
    for x in ev.activations():
        fn = narrow.encode(x) > 0
        fw = (wide.encode(x)[:, kids] > 0).float()
        c = torch.zeros(len(x), narrow.d_sae).index_add_(1, parent[kids], fw)  # children firing per narrow feature
        fn_n = fn_n + fn.sum(0).double()
        inter = inter + (fn & (c > 0)).sum(0).double()
        union = union + (c > 0).sum(0).double()
        one = one + (fn & (c == 1)).sum(0).double()
    split = (n_children >= 2) & (fn_n > 0)
    cov, spill = inter / fn_n.clamp_min(1), 1 - inter / union.clamp_min(1)
    excl = torch.where(inter > 0, one / inter.clamp_min(1), torch.full_like(one, float("nan")))
    pool = torch.from_numpy(live_narrow) if live_narrow is not None else torch.ones(narrow.d_sae, dtype=torch.bool)
    counts = {f"share_narrow_with_{k}_children": float((n_children[pool] == k).float().mean()) for k in (0, 1, 2)}
    counts["share_narrow_with_3plus_children"] = float((n_children[pool] >= 3).float().mean())
    counts["n_narrow_live"] = int(pool.sum())
    m = counts | {"n_split": int(split.sum()), "share_wide_children": float(child.float().mean())}
    if split.any():
        part = split & (cov >= 0.8) & (excl >= 0.8) & (spill <= 0.2)
        m |= {
            "split_coverage_median": float(cov[split].median()),
            "split_exclusivity_median": float(excl[split].nanmedian()) if (inter[split] > 0).any() else None,
            "split_spill_median": float(spill[split].median()),
            "share_split_partitions": float(part.sum() / split.sum()),
        }
    rows = [
        {
            "narrow": int(i),
            "n_children": int(n_children[i]),
            "fires": int(fn_n[i]),
            "coverage": float(cov[i]),
            "exclusivity": float(excl[i]),
            "spill": float(spill[i]),
            "children": " ".join(str(int(j)) for j in (parent == i).logical_and(child).nonzero().squeeze(-1)),
        }
        for i in split.nonzero().squeeze(-1).tolist()
    ]
    return m, rows


# ------------------------------------------------------------------ question 12


def consensus(saes: list, consensus_cos: float) -> tuple[np.ndarray, dict]:
    """Features of ``saes[0]`` found in every SAE: matched one-to-one (Hungarian on decoder cos) to
    each other SAE, with every pair of the group's decoder rows at cos > ``consensus_cos``.
    Returns (bool mask over saes[0]'s features, metrics)."""
    W = [s.W_dec.detach() for s in saes]
    groups = [np.arange(W[0].shape[0])]
    for w in W[1:]:
        rows, cols, _ = match(decoder_cosines(W[0], w).numpy(), 1 << 30)
        to = np.full(W[0].shape[0], -1)
        to[rows] = cols
        groups.append(to)
    groups = np.stack(groups, 1)  # (d_sae, n_saes): a's feature and its match in each other SAE
    ok = (groups >= 0).all(1)
    for a in range(len(W)):
        for b in range(a + 1, len(W)):
            ia, ib = groups[:, a].clip(0), groups[:, b].clip(0)
            ok &= (unit(W[a][ia]) * unit(W[b][ib])).sum(-1).numpy() > consensus_cos
    pair = {
        f"{a}-{b}": float(
            (
                (unit(W[a][groups[:, a].clip(0)]) * unit(W[b][groups[:, b].clip(0)])).sum(-1).numpy() > consensus_cos
            ).mean()
        )
        for a in range(len(W))
        for b in range(a + 1, len(W))
    }
    return ok, {
        "n_saes": len(W),
        "n_consensus": int(ok.sum()),
        "share_consensus": float(ok.mean()),
        "share_matched_above_by_pair": pair,
    }


def feature_profile(sae, freq: np.ndarray, W_out, W_U, ln_w) -> dict[str, np.ndarray]:
    """Per feature: log10 frequency, neuron sparsity (top-1 share of squared decoder weights) and
    logit-lens kurtosis (docs/metrics.md)."""
    W_dec = sae.W_dec.detach().float()
    top1, _ = neuron_sparsity(W_dec)
    kurt = moments(logit_effects(W_dec, W_U, W_out, ln_w))["logit_kurtosis"]
    return {"log10_freq": np.log10(np.maximum(freq, 1e-7)), "fve_top_1": top1.numpy(), "logit_kurtosis": kurt}


def compare_groups(profile: dict, a: np.ndarray, b: np.ndarray, prefix_a: str, prefix_b: str) -> dict:
    """Medians of each profile column in groups ``a`` and ``b`` (masks) and a Mann-Whitney p-value."""
    out = {}
    for k, v in profile.items():
        if a.any() and b.any():
            out[f"{prefix_a}_{k}_median"] = float(np.median(v[a]))
            out[f"{prefix_b}_{k}_median"] = float(np.median(v[b]))
            out[f"{k}_mannwhitney_p"] = float(stats.mannwhitneyu(v[a], v[b]).pvalue)
    return out


def enc_dec_profile(sae, freq: np.ndarray, threshold: float) -> dict:
    """Encoder/decoder cosine of the non-ultra-low features: median, and the shares in the seed's
    two modes (0.4-0.6 and 0.65-0.85)."""
    c = enc_dec_cosine(sae.W_enc.detach(), sae.W_dec.detach()).numpy()[freq >= threshold]
    if not len(c):
        return {}
    return {
        "enc_dec_cos_median": float(np.median(c)),
        "enc_dec_share_0.4_0.6": float(((c >= 0.4) & (c < 0.6)).mean()),
        "enc_dec_share_0.65_0.85": float(((c >= 0.65) & (c < 0.85)).mean()),
    }
