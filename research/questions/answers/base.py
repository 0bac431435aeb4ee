"""What every question shares: the context of one answer run, the registry, and the run summary.

Definitions used throughout (docs/questions.md, "Shared definitions"): a feature is ultra-low when its
firing frequency on the run's eval sample is below ``evaluate.ultra_low_threshold`` (dead features
included, as in docs/metrics.md); the ultra-low direction is the mean encoder column of those features
(saelab.eval.compare.ultra_low_direction); CE recovered is against zero ablation on the same eval sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from research.questions.registry import QUESTIONS, QuestionParams, question  # noqa: F401 (re-exported)
from saelab.analysis.weights import cluster_sameness
from saelab.eval.metrics import frequency_fractions

HEADLINE = ("ce_recovered_zero", "mse", "l0", "l2_ratio", "frac_ultra_low", "frac_dead")


@dataclass
class Context:
    """Everything the answer stage loads once (runs, scores, the LM's maps, the cache) and the outputs
    every question adds to: ``res`` (answers.json), ``tables`` (CSV), ``figs`` (PNG); ``shared`` carries
    values one question hands a later one (question 1's direction to question 2)."""

    args: object
    q: object
    a: object  # the shared answer knobs (experiment.AnswerConfig); a question's own params come as its second argument
    thr: object
    device: object
    lm: object
    ev: object
    saes: object
    scores: object
    freq: object
    runs: object
    base: object
    B: object
    W_out: object
    W_U: object
    ln_w: object
    cache: object
    cache_mean: object
    res: dict = field(default_factory=dict)
    figs: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)


def summary(score: dict, threshold: float) -> dict:
    """The headline numbers of a score (EvalSet.score) with the frequency fractions."""
    freq = score["freq"]
    out = {k: score[k] for k in ("ce_recovered_zero", "ce_sae", "mse", "l0", "l2_ratio") if k in score}
    shares = frequency_fractions(freq, threshold, dense=1.0)  # the one definition (saelab.eval.metrics)
    return out | {
        "frac_ultra_low": shares["frac_ultra_low"],
        "frac_dead": shares["frac_dead"],
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
