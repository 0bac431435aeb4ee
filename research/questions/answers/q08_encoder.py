"""Question 8 of the reference post: encoder regularisation and tying.

Its computation (enc_dec_profile and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 8;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import numpy as np

from research.questions.answers.base import Context, QuestionParams, question
from saelab.analysis.weights import (
    enc_dec_cosine,
)


def enc_dec_profile(sae, freq: np.ndarray, threshold: float) -> dict:
    """Encoder/decoder cosine of the non-ultra-low features: median, and the shares in the reference's
    two modes (0.4-0.6 and 0.65-0.85)."""
    c = enc_dec_cosine(sae.W_enc.detach(), sae.W_dec.detach()).numpy()[freq >= threshold]
    if not len(c):
        return {}
    return {
        "enc_dec_cos_median": float(np.median(c)),
        "enc_dec_share_0.4_0.6": float(((c >= 0.4) & (c < 0.6)).mean()),
        "enc_dec_share_0.65_0.85": float(((c >= 0.65) & (c < 0.85)).mean()),
    }


class Params(QuestionParams):
    RUN_FIELDS = ("encoder_runs",)
    encoder_runs: tuple[str, ...] = ("enc-l1", "enc-l2", "tied")
    """Runs with an encoder penalty or a tied encoder, compared with the base run."""


@question("q8_encoder", Params)
def answer(c: Context, p: Params) -> None:
    """Question 8: encoder regularisation and tying (docs/questions.md, question 8)."""
    thr, saes, freq, runs, base, res = c.thr, c.saes, c.freq, c.runs, c.base, c.res
    res["q8_encoder"] = {n: runs[n] | enc_dec_profile(saes[n], freq[n], thr) for n in (base, *p.encoder_runs)}
