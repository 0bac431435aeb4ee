"""Question 10 of the reference post: dropping the k smallest active features or keeping the k largest.

Its computation (drop_lowest, keep_top and ``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 10;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import torch

from research.questions.answers.base import Context, QuestionParams, question, summary


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


class Params(QuestionParams):
    drop_k: tuple[int, ...] = (1, 2, 5, 10, 20)
    """The k smallest active features dropped per token (and, for contrast, the k largest kept)."""


@question("q10_drop_k", Params)
def answer(c: Context, p: Params) -> None:
    """Question 10: dropping the k smallest active features or keeping the k largest (docs/questions.md)."""
    thr, ev, scores, base, B = c.thr, c.ev, c.scores, c.base, c.B
    res, figs, tables = c.res, c.figs, c.tables
    curve = [{"k": 0, "mode": "none", **summary(scores[base], thr)}]
    for k in p.drop_k:
        for mode, fn in (("drop_lowest", drop_lowest(k)), ("keep_top", keep_top(k))):
            curve.append({"k": k, "mode": mode, **summary(ev(base).score(B, fn), thr)})
    tables["q10_drop_k"] = [{k: v for k, v in r.items()} for r in curve]
    res["q10_drop_k"] = {f"{r['mode']}_{r['k']}": {k: r[k] for k in ("ce_recovered_zero", "mse", "l0")} for r in curve}
    figs["q10_drop_k"] = [
        {
            mode: (
                [r["k"] for r in curve if r["mode"] == mode],
                [r["ce_recovered_zero"] for r in curve if r["mode"] == mode],
            )
            for mode in ("drop_lowest", "keep_top")
        },
        "k",
        "CE recovered (zero ablation)",
        "Drop the k smallest active features vs keep the k largest",
    ]
