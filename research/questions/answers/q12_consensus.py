"""Question 12 of the reference post: consensus features over seeds.

Its computation (consensus, feature_profile, compare_groups and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 12;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np
from pydantic import Field
from scipy import stats

from research.questions.answers.base import Context, QuestionParams, question
from saelab.analysis.weights import (
    logit_effects,
    moments,
    neuron_sparsity,
    unit,
)
from saelab.eval.compare import decoder_cosines, match


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


class Params(QuestionParams):
    RUN_FIELDS = ("seeds",)
    seeds: tuple[str, ...] = ("base", "seed-1", "seed-2", "seed-3", "seed-4")
    """Runs of the default recipe in different seeds."""
    consensus_cos: float = Field(0.9, gt=0, le=1)
    """A consensus feature has decoder cos above this with its match in every pair of seeds."""


@question("q12_consensus", Params)
def answer(c: Context, p: Params) -> None:
    """Question 12: consensus features over seeds (docs/questions.md, question 12)."""
    thr = c.thr
    saes = c.saes
    freq = c.freq
    runs = c.runs
    base = c.base
    B = c.B
    W_out = c.W_out
    W_U = c.W_U
    ln_w = c.ln_w
    res = c.res
    seeds = [saes[n] for n in p.seeds]
    ok, m12 = consensus(seeds, p.consensus_cos)
    prof = feature_profile(B.cpu(), freq[base], W_out, W_U, ln_w)
    alive = freq[base] >= thr
    m12 |= compare_groups(prof, ok, alive & ~ok, "consensus", "other_non_ultra_low")
    m12["n_consensus_ultra_low"] = int((ok & ~alive).sum())
    res["q12_consensus"] = m12 | {"runs": {n: runs[n] for n in p.seeds}}
