"""Question 2 of the reference post: the orthogonality fix (the first direction removed in training).

Its computation (``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 2;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

from research.questions.answers.base import Context, QuestionParams, question
from saelab.eval.compare import cosine, ultra_low_direction
from saelab.io import load_weights


class Params(QuestionParams):
    RUN_FIELDS = ("run",)
    run: str = "orthogonal"
    """The run trained with its encoder orthogonal to the base run's training-time ultra-low direction."""

    def check(self, every) -> None:
        if every[self.run].probes.orthogonalize is None:
            raise ValueError(f"run {self.run!r} sets no probes.orthogonalize")


@question("q2_orthogonal", Params)
def answer(c: Context, p: Params) -> None:
    """Question 2: the orthogonality fix (the first direction removed in training) (docs/questions.md, question 2)."""
    args = c.args
    thr = c.thr
    saes = c.saes
    freq = c.freq
    runs = c.runs
    base = c.base
    cache_mean = c.cache_mean
    res = c.res
    u = c.shared["u"]
    o = p.run
    to = args.models / o / "orthogonal_to.safetensors"
    first = load_weights(to)["direction"].double() if to.exists() else None  # None: base had no cluster
    u2 = ultra_low_direction(saes[o].W_enc.detach(), freq[o], thr)
    res["q2_orthogonal"] = {
        "base": runs[base],
        "orthogonal": runs[o],
        "constrained": first is not None,
        "cos_first_direction_eval_vs_training": cosine(u, first) if u is not None and first is not None else None,
    }
    if u2 is not None and first is not None:
        res["q2_orthogonal"] |= {
            "cos_new_direction_with_first": cosine(u2, first),
            "cos_new_direction_with_mean_activation": cosine(u2, cache_mean),
            "cos_new_direction_with_b_dec": cosine(u2, saes[o].b_dec.detach()),
        }
