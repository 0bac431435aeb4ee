"""Question 5 of the reference post: ablating the ultra-low cluster.

Its computation (``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 5;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

import torch

from research.questions.answers.base import Context, QuestionParams, question, summary


@question("q5_cluster_ablation")
def answer(c: Context, p: QuestionParams) -> None:
    """Question 5: ablating the ultra-low cluster (docs/questions.md, question 5)."""
    thr, ev, scores, freq, base, B, res = c.thr, c.ev, c.scores, c.freq, c.base, c.B, c.res
    ultra = torch.from_numpy(freq[base] < thr)
    masked = ev(base).score(B, lambda f: f.masked_fill(ultra.to(f.device), 0.0))
    res["q5_cluster_ablation"] = {
        "with": summary(scores[base], thr),
        "without_ultra_low": summary(masked, thr),
        "n_ultra_low": int(ultra.sum()),
    }
