"""Question 7 of the reference post: which activations: the MLP's output instead of its hidden layer.

Its computation (``answer``), registered by name; the answer stage runs
every registered question in order and writes ``results/answers.json`` (docs/questions.md, question 7;
verdicts in research/questions/FINDINGS.md)."""

from __future__ import annotations

from research.interpolate import at_l0
from research.questions.answers.base import Context, QuestionParams, question


class Params(QuestionParams):
    RUN_FIELDS = ("hook_runs",)
    hook_runs: tuple[str, ...] = ("mlp-out-a", "mlp-out-b", "mlp-out-c")
    """Runs on the other hook (hook_runs of params.yaml)."""


@question("q7_hook", Params)
def answer(c: Context, p: Params) -> None:
    """Question 7: which activations: the MLP's output instead of its hidden layer (docs/questions.md, question 7)."""
    runs, base, res = c.runs, c.base, c.res
    base_l0 = runs[base]["l0"]
    pts = [(runs[n]["l0"], runs[n]) for n in p.hook_runs]
    res["q7_hook"] = {
        "base": runs[base],
        "runs": {n: runs[n] for n in p.hook_runs},
        "base_l0": base_l0,
        **{
            f"{k}_at_base_l0": at_l0([(l0, r[k]) for l0, r in pts], base_l0)
            for k in ("frac_ultra_low", "ce_recovered_zero", "mse")
        },
    }
