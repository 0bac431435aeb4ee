"""Questions stage answer: every question's numbers, tables and figures from the trained runs
(docs/questions.md; the verdicts are in questions/FINDINGS.md).

    python -m research.questions.stages.answer --models models --data data --lm ../../models/lm --tokens ../../data/tokens \
        --activations ../../data/activations --out results --metrics metrics.json
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from research.questions import answers as A
from research.questions.experiment import EvalSet, load_question_params
from research.synthetic.recovery import at_l0
from saelab.analysis.contexts import context, token_pieces
from saelab.analysis.plots import save_figure
from saelab.data.cache import ActivationCache
from saelab.data.hooks import check_hook, is_mlp_post
from saelab.data.lm import excluded_token, ln_final_weight, load_lm
from saelab.data.tokens import read_rows
from saelab.eval.compare import cosine, ultra_low_direction
from saelab.io import atomic_dir, load_weights, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage
from saelab.training.trainer import Schedule


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
            n: A.summary(scores[n], thr) | A.cluster_stats(saes[n], freq[n], thr) | {"hook": q.hook(n)} for n in q.every
        }
        base, B = a.base, saes[a.base]
        res: dict = {}
        figs: dict[str, list] = {}
        tables: dict[str, list[dict]] = {}
        layer, _ = check_hook(q.default.activations.hook, lm.config["tl_config"])
        W_out = lm.model.W_out[layer].detach().cpu().float() if is_mlp_post(q.default.activations.hook) else None
        W_U, ln_w = lm.model.W_U.detach().cpu().float(), ln_final_weight(lm)

        # 1. the shared ultra-low direction
        grad = load_weights(args.models / base / "grad_sum.safetensors")
        cache = ActivationCache(args.activations)
        cache_mean = cache.mean.double()
        m1, u = A.direction_origin(B, freq[base], ev(base), cache_mean, W_out, grad, thr)
        res["q1_direction"] = m1
        if u is not None:
            pieces = token_pieces(lm.tokenizer)
            top = A.top_projections(ev(base), u, a.n_contexts)
            tables["q1_top_contexts"] = [
                {"projection": v, "left": l, "token": t, "right": r}
                for v, i in top
                for l, t, r in [context(ev(base).rows, i, pieces, 16, 4)]
            ]

        # 2. the orthogonality fix
        o = a.orthogonal
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

        # 3. resampling as the cause
        res["q3_resampling"] = {mode: runs[name] for mode, name in a.resampling.items()}

        # 4. dying features and the phase transition
        density = {n: pq.read_table(args.models / n / "density.parquet") for n in q.every if q.every[n].probes.density}
        curves = {n: A.density_curve(t, thr) for n, t in density.items()}
        for n, c in curves.items():
            tables[f"q4_density_{n}"] = c
        figs["q4_ultra_low_share"] = [
            {n: ([r["tokens"] for r in c], [r["frac_ultra_low"] for r in c]) for n, c in curves.items()},
            "training tokens seen",
            "share of features below 1e-4 in the interval",
            "Ultra-low share during training (density history)",
        ]
        h = a.holdout
        held = pq.read_table(args.models / h / "holdout.parquet")["feature"].to_numpy()
        hcfg = q.sae_config(h)
        sched = Schedule.from_config(hcfg)
        checks = [s * hcfg.batch_size for s in range(sched.every, sched.stop + 1, sched.every)]
        m4, held_curve = A.held_dying(density[h], held, checks, hcfg.resample_window, hcfg.resample_threshold, thr)
        tables["q4_held_dying"] = held_curve
        res["q4_dying"] = m4 | {
            "resampled_total_base": int(pq.read_table(args.models / base / "resamples.parquet").num_rows),
            "ultra_low_share_by_run": {n: runs[n]["frac_ultra_low"] for n in (base, h)},
            "ce_recovered_by_run": {n: runs[n]["ce_recovered_zero"] for n in (base, h)},
        }
        none = a.resampling.get("none")
        if (
            none in density
        ):  # the same watch over every feature of a run that never resamples: no mass resampling nearby
            res["q4_dying_unresampled"], tables["q4_dying_unresampled"] = A.held_dying(
                density[none],
                np.unique(np.asarray(density[none]["feature"])),
                checks,
                hcfg.resample_window,
                hcfg.resample_threshold,
                thr,
            )
            res["q4_dying_unresampled"]["run"] = none

        # 5. ablating the cluster
        ultra = torch.from_numpy(freq[base] < thr)
        masked = ev(base).score(B, lambda f: f.masked_fill(ultra.to(f.device), 0.0))
        res["q5_cluster_ablation"] = {
            "with": A.summary(scores[base], thr),
            "without_ultra_low": A.summary(masked, thr),
            "n_ultra_low": int(ultra.sum()),
        }

        # 6. bias and firing sets
        cluster = np.flatnonzero(freq[base] < thr)
        fsets = A.firing_sets(B, ev(base), cluster)
        b_eff = (B.b_enc - B.b_dec @ B.W_enc).detach().cpu().numpy()[cluster]  # pre-activation at x = 0
        res["q6_bias_supersets"] = {
            "effective_bias": A.superset_shares(fsets, b_eff),
            "b_enc": A.superset_shares(fsets, B.b_enc.detach().cpu().numpy()[cluster]),
        }

        # 7. which activations
        base_l0 = runs[base]["l0"]
        pts = [(runs[n]["l0"], runs[n]) for n in a.hook_runs]
        res["q7_hook"] = {
            "base": runs[base],
            "runs": {n: runs[n] for n in a.hook_runs},
            "base_l0": base_l0,
            **{
                f"{k}_at_base_l0": at_l0([(l0, r[k]) for l0, r in pts], base_l0)
                for k in ("frac_ultra_low", "ce_recovered_zero", "mse")
            },
        }

        # 8. encoder regularisation and tying
        res["q8_encoder"] = {n: runs[n] | A.enc_dec_profile(saes[n], freq[n], thr) for n in (base, *a.encoder_runs)}

        # 9. shrinkage
        cfg = q.sae_config(base)
        res["q9_shrinkage"] = {"before": A.summary(scores[base], thr)}
        for mode in ("decoder", "scale"):
            tuned = A.finetune(
                B.cpu(), cache.batches(cfg.batch_size, seed=1000), a.finetune_tokens, a.finetune_lr, mode
            )
            res["q9_shrinkage"][f"after_{mode}"] = A.summary(ev(base).score(tuned.to(device)), thr)
        res["q9_shrinkage"]["finetune_tokens"] = a.finetune_tokens

        # 10. dropping the k smallest features
        curve = [{"k": 0, "mode": "none", **A.summary(scores[base], thr)}]
        for k in a.drop_k:
            for mode, fn in (("drop_lowest", A.drop_lowest(k)), ("keep_top", A.keep_top(k))):
                curve.append({"k": k, "mode": mode, **A.summary(ev(base).score(B, fn), thr)})
        tables["q10_drop_k"] = [{k: v for k, v in r.items()} for r in curve]
        res["q10_drop_k"] = {
            f"{r['mode']}_{r['k']}": {k: r[k] for k in ("ce_recovered_zero", "mse", "l0")} for r in curve
        }
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

        # 11. width and splitting
        w = list(a.widths)
        res["q11_width"] = {"runs": {n: runs[n] | {"ce_gap": scores[n]["ce_sae"] - scores[n]["ce_clean"]} for n in w}}
        for narrow, wide in zip(w, w[1:]):
            m, split_rows = A.splitting(
                saes[narrow], saes[wide], ev(base), a.split_cos, freq[narrow] >= thr, freq[wide] >= thr
            )
            res["q11_width"][f"{narrow}_to_{wide}"] = m
            tables[f"q11_splits_{narrow}_to_{wide}"] = split_rows
        figs["q11_ce_gap"] = [
            {
                "CE gap": ([runs[n]["n_features"] for n in w], [res["q11_width"]["runs"][n]["ce_gap"] for n in w]),
                "ultra-low share": ([runs[n]["n_features"] for n in w], [runs[n]["frac_ultra_low"] for n in w]),
            },
            "features",
            "nats / share",
            "CE gap (CE_sae - CE_clean) and ultra-low share by width",
            True,
        ]

        # 12. consensus over seeds
        seeds = [saes[n] for n in a.seeds]
        ok, m12 = A.consensus(seeds, a.consensus_cos)
        prof = A.feature_profile(B.cpu(), freq[base], W_out, W_U, ln_w)
        alive = freq[base] >= thr
        m12 |= A.compare_groups(prof, ok, alive & ~ok, "consensus", "other_non_ultra_low")
        m12["n_consensus_ultra_low"] = int((ok & ~alive).sum())
        res["q12_consensus"] = m12 | {"runs": {n: runs[n] for n in a.seeds}}

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
        write_json(args.metrics, {f"{n}_{k}": v for n, r in runs.items() for k, v in r.items() if k in A.HEADLINE})
        log.info("answers -> %s", args.out)


if __name__ == "__main__":
    main()
