"""Question 3 of the reference post: resampling as the cause of the cluster.

Its computation (``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 3;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

from research.questions.answers.base import Context, question


@question("q3_resampling")
def answer(c: Context) -> None:
    """Question 3: resampling as the cause of the cluster (docs/questions.md, question 3)."""
    a, runs, res = c.a, c.runs, c.res
    res["q3_resampling"] = {mode: runs[name] for mode, name in a.resampling.items()}
