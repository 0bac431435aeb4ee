"""Question 6 of the reference post: the encoder bias and the firing sets of ultra-low features.

Its computation (firing_sets, superset_shares and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 6;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np
import torch

from research.questions.answers.base import Context, QuestionParams, question


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


@question("q6_bias_supersets")
def answer(c: Context, p: QuestionParams) -> None:
    """Question 6: the encoder bias and the firing sets of ultra-low features (docs/questions.md, question 6)."""
    thr, ev, freq, base, B, res = c.thr, c.ev, c.freq, c.base, c.B, c.res
    cluster = np.flatnonzero(freq[base] < thr)
    fsets = firing_sets(B, ev(base), cluster)
    b_eff = (B.b_enc - B.b_dec @ B.W_enc).detach().cpu().numpy()[cluster]  # pre-activation at x = 0
    res["q6_bias_supersets"] = {
        "effective_bias": superset_shares(fsets, b_eff),
        "b_enc": superset_shares(fsets, B.b_enc.detach().cpu().numpy()[cluster]),
    }
