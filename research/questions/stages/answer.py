"""Questions stage answer: loads the trained runs and their scores once, then runs every registered
question (research/questions/answers/, one module each) and writes their numbers, tables and figures
(docs/questions.md; the verdicts are in research/questions/FINDINGS.md).

    python -m research.questions.stages.answer --models models --data data --lm ../../models/lm \\
        --tokens ../../data/tokens --activations ../../data/activations --out results --metrics metrics.json
"""

from pathlib import Path

import torch

from research.questions.answers import HEADLINE, QUESTIONS, Context, cluster_stats, summary
from research.questions.experiment import EvalSet, load_question_params
from saelab.analysis.plots import save_figure
from saelab.data.cache import ActivationCache
from saelab.data.hooks import check_hook, is_mlp_post
from saelab.data.lm import excluded_token, ln_final_weight, load_lm
from saelab.data.tokens import read_rows
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage


def _csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["empty"])
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, series: dict[str, tuple], xlabel: str, ylabel: str, title: str, logx: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    p = parser(__doc__)
    for name in ("models", "data", "lm", "tokens", "activations", "out", "metrics"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("q-answer", args, load_question_params) as q:
        a, ev_cfg = q.answer, q.default.evaluate
        thr = ev_cfg.ultra_low_threshold
        torch.manual_seed(0)
        device = resolve_device(ev_cfg.device)
        lm = load_lm(args.lm, device)
        rows = read_rows(args.tokens / "eval.parquet")
        exclude = excluded_token(lm, q.default.activations.bos)
        sets: dict[str, EvalSet] = {}

        def ev(run: str) -> EvalSet:
            hook = q.hook(run)
            if hook not in sets:
                log.info("eval sample of %d tokens on %s", a.eval_tokens, hook)
                sets[hook] = EvalSet(lm.model, rows, hook, ev_cfg, a.eval_tokens, a.batch_rows, device, exclude)
            return sets[hook]

        saes = {name: SAE.load(args.models / name, device)[0].eval() for name in q.every}
        scores = {}
        for name, sae in saes.items():
            scores[name] = ev(name).score(sae)
            log.info(
                "%s: CE recovered %.4f, L0 %.1f, ultra-low %.3f",
                name,
                scores[name]["ce_recovered_zero"],
                scores[name]["l0"],
                (scores[name]["freq"] < thr).mean(),
            )
        freq = {n: s["freq"] for n, s in scores.items()}
        runs = {
            n: summary(scores[n], thr) | cluster_stats(saes[n], freq[n], thr) | {"hook": q.hook(n)} for n in q.every
        }
        base, B = a.base, saes[a.base]
        layer, _ = check_hook(q.default.activations.hook, lm.config["tl_config"])
        W_out = lm.model.W_out[layer].detach().cpu().float() if is_mlp_post(q.default.activations.hook) else None
        W_U, ln_w = lm.model.W_U.detach().cpu().float(), ln_final_weight(lm)

        cache = ActivationCache(args.activations)
        c = Context(
            args, q, a, thr, device, lm, ev, saes, scores, freq, runs, base, B, W_out, W_U, ln_w,
            cache, cache.mean.double(),
        )  # fmt: skip
        for key, answer in QUESTIONS.items():
            log.info("answering %s", key)
            answer(c, a.params(key))
        res, figs, tables = c.res, c.figs, c.tables

        res["runs"] = runs
        res["eval"] = {
            hook: {"eval_tokens": s.n_tokens, "ce_tokens": s.n_ce, "ce_clean": s.ce_clean, "ce_zero": s.ce_zero}
            for hook, s in sets.items()
        }
        res["definitions"] = "docs/questions.md"
        with atomic_dir(args.out) as tmp:
            write_json(tmp / "answers.json", res)
            for name, t in tables.items():
                _csv(tmp / f"{name}.csv", t)
            for name, (series, xl, yl, title, *logx) in figs.items():
                _plot(tmp / f"{name}.png", series, xl, yl, title, bool(logx and logx[0]))
        write_json(args.metrics, {f"{n}_{k}": v for n, r in runs.items() for k, v in r.items() if k in HEADLINE})
        log.info("answers -> %s", args.out)


if __name__ == "__main__":
    main()
