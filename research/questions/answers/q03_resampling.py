"""Question 3 of the reference post: resampling as the cause of the cluster.

Its computation (``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 3;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

from research.questions.answers.base import Context, QuestionParams, question


class Params(QuestionParams):
    RUN_FIELDS = ("runs_by_mode",)
    runs_by_mode: dict[str, str] = {"anthropic": "base", "reinit": "resample-reinit", "none": "resample-none"}
    """Resampling mode -> the run trained with it."""


@question("q3_resampling", Params)
def answer(c: Context, p: Params) -> None:
    """Question 3: resampling as the cause of the cluster (docs/questions.md, question 3)."""
    runs, res = c.runs, c.res
    res["q3_resampling"] = {mode: runs[name] for mode, name in p.runs_by_mode.items()}
