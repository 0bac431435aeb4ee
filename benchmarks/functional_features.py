"""The features each loss finds alone: a KL-trained and an MSE-trained SAE of one architecture from
benchmarks/functional.py's work directory, the features of each with no close decoder match in the other, how
visible their directions are to the LM, and the tokens they fire on most (docs/metrics.md, "Functional training",
"Features unique to a loss").

    python benchmarks/functional.py --only topk --work /tmp/functional-work \
        --out benchmarks/results/functional_topk_cpu      # trains the SAEs (or reuses the work directory's)
    python benchmarks/functional_features.py --arch topk --value 32 --work /tmp/functional-work \
        --table benchmarks/results/functional_topk_cpu/functional.json --out benchmarks/results/functional_features_cpu

The two SAEs are read from the work directory under the settings key of the arguments given (the same arguments as
functional.py, so the same defaults), or from ``--runs``. Each is scored again on this workspace (LM, tokens,
cache mean, evaluate params) and must score exactly, to the last bit, as its result.json and the committed
table's row say: SAEs trained on another LM or scored on other tokens are refused, never silently used. On the
held-out eval sample (``--eval-tokens`` of the seeded permutation, the one functional.py scores on) every alive
feature's top ``--n-examples`` activations are kept.

Output: ``features.json`` (every set's summary, every unique feature with its top contexts) and ``features.md``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frontier import eval_context, score  # noqa: E402
from functional import best_cosines, json_safe, parser, settings_key  # noqa: E402
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.analysis.contexts import context, token_pieces  # noqa: E402
from saelab.analysis.passes import merge_topk  # noqa: E402
from saelab.config import hook_layer  # noqa: E402
from saelab.data.hooks import capture, covered_positions  # noqa: E402
from saelab.eval.evaluate import EvalSample  # noqa: E402
from saelab.saes.base import SAE  # noqa: E402

CHECKED = ("l0", "mse", "ce_recovered_zero", "frac_dead", "eval_tokens")  # a work run must match its table row
THRESHOLDS = (0.3, 0.5, 0.7)  # best-match cosines at which the unique / matched split is reported


def rescored_differs(got: dict, again: dict) -> list[str]:
    """The keys of a run's result.json that a fresh score on this workspace does not reproduce exactly."""
    return [k for k, v in again.items() if got.get(k) != v]


def unique(a: torch.Tensor, b: torch.Tensor, alive_a: torch.Tensor, alive_b: torch.Tensor, below: float):
    """Alive rows of decoder ``a`` whose best cosine with any alive row of ``b`` is below ``below``, and the same for
    ``b``; with every alive row's best cosine (NaN for dead rows, and for every row when the other SAE has no alive
    row: then nothing matches, so every alive row is unique)."""
    best_a, best_b = (torch.full((len(m),), math.nan) for m in (alive_a, alive_b))
    if alive_a.any() and alive_b.any():
        best_a[alive_a], best_b[alive_b] = best_cosines(a[alive_a], b[alive_b])
    return alive_a & ~(best_a >= below), alive_b & ~(best_b >= below), best_a, best_b


def read_gain(dec: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """‖W_out d̂‖ of every unit decoder row d̂, over the same for a random unit direction (RMS: ‖W_out‖_F / √d):
    1 means the LM reads the direction as much as a random one, 0 that it lies in W_out's null space."""
    unit = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (unit @ w_out.T).norm(dim=1) / (w_out.norm() / math.sqrt(w_out.shape[1]))


def mode_share(token_ids: list[int]) -> float:
    """The share of a feature's top activations that are on its most common token (1: a single-token feature)."""
    return Counter(token_ids).most_common(1)[0][1] / len(token_ids) if token_ids else math.nan


@torch.no_grad()
def top_examples(model, saes: dict[str, SAE], rows, hook, sample, exclude, n_examples: int, batch_rows: int = 32):
    """One pass over ``sample``: per SAE, every feature's fire count and its top activations (values, global token
    indices row * n_ctx + pos), at covered positions only; and the number of covered tokens."""
    n_ctx = rows.shape[1]
    counts = {k: torch.zeros(s.d_sae, dtype=torch.long) for k, s in saes.items()}
    best = {k: (torch.zeros(s.d_sae, n_examples), torch.full((s.d_sae, n_examples), -1)) for k, s in saes.items()}
    n_covered = 0
    for tokens, ids, _ in sample.batches(rows, batch_rows, torch.device("cpu")):
        covered = covered_positions(tokens, exclude).reshape(-1, 1)
        x = capture(model, tokens, hook)[1].reshape(-1, next(iter(saes.values())).d_in).float()
        gidx = (torch.from_numpy(ids)[:, None] * n_ctx + torch.arange(n_ctx)).reshape(-1)
        n_covered += int(covered.sum())
        for k, sae in saes.items():
            f = sae.encode(x) * covered
            counts[k] += (f > 0).sum(0)
            v, i = f.T.topk(min(n_examples, len(f)), dim=1)
            best[k] = merge_topk(*best[k], v, gidx[i], n_examples)
    return counts, best, n_covered


def pair_overlaps(dec: dict, counts: dict, w_out: torch.Tensor) -> list[dict]:
    """Best-match cosines of the alive features of each pair (KL vs MSE; each loss against its other seed when
    given), in the hook's space and in the space the LM reads it through (rows · W_outᵀ): medians and unique counts
    at every threshold, for the first SAE of the pair."""
    pairs = [("kl", "mse"), ("mse", "kl")] + [(k, f"{k}@other") for k in ("kl", "mse") if f"{k}@other" in dec]
    out = []
    for a, b in pairs:
        for space, (da, db) in (("hook", (dec[a], dec[b])), ("read", (dec[a] @ w_out.T, dec[b] @ w_out.T))):
            *_, ca, _ = unique(da, db, counts[a] > 0, counts[b] > 0, 1.0)
            alive = ca[counts[a] > 0]
            out.append({"of": a, "against": b, "space": space, "alive": len(alive),
                        "median_best_cos": float(alive.median()) if len(alive) else None,
                        "unique": {str(t): int((~(alive >= t)).sum()) for t in THRESHOLDS}})  # fmt: skip
    return out


def summary(mask, freq, gain, best_cos, shares) -> dict:
    """Median (and quartiles of the read gain) of one set of features."""
    idx = mask.nonzero().flatten()
    q = lambda t, p: float(t[idx].quantile(p)) if len(idx) else None  # noqa: E731
    share = float(np.median([shares[i] for i in idx.tolist()])) if len(idx) else None
    f = freq[idx].sort(descending=True).values
    top = float(f[: max(1, len(f) // 20)].sum() / f.sum()) if f.sum() > 0 else None  # the densest 5%'s share
    dense = {"mean_frequency": float(f.mean()) if len(f) else None, "n_above_0.1": int((f > 0.1).sum()),
             "top_5pct_share_of_firings": top}  # fmt: skip
    return {"n": len(idx), **dense, "median_frequency": q(freq, 0.5), "median_best_cos": q(best_cos, 0.5),
            "read_gain_q25": q(gain, 0.25), "read_gain_median": q(gain, 0.5), "read_gain_q75": q(gain, 0.75),
            "median_top_token_share": share}  # fmt: skip


def md(s: str) -> str:
    """Corpus text inside a Markdown table's code span: no line break, pipe or backtick survives raw."""
    return s.replace("\n", "⏎").replace("\t", "→").replace("|", "¦").replace("`", "ˋ")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="topk")
    p.add_argument("--value", default="32", help="the KL run's knob value (as in the run's folder name)")
    p.add_argument("--mse-value", default=None, help="the MSE run's knob value (default: --value)")
    p.add_argument("--unique-below", type=float, default=0.5, help="best-match cosine below which a feature is unique")
    p.add_argument("--n-examples", type=int, default=10)
    p.add_argument("--n-show", type=int, default=8, help="unique features shown per loss in features.md")
    p.add_argument("--table", type=Path, required=True, help="the committed functional.json the runs must match")
    p.add_argument(
        "--runs", type=Path, help="the folder holding <arch>-<loss>-<value>/ (default: --work/<settings key>)"
    )
    p.add_argument("--baseline-runs", type=Path, help="the same runs of another seed: same-loss pairs as a baseline")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/functional_features_cpu"))
    args = p.parse_args()
    threads.configure()
    work = args.runs or args.work / settings_key(args)
    table = json.loads(args.table.read_text())["runs"]
    runs = {"kl": args.value, "mse": args.mse_value or args.value}
    saes, rows_of = {}, {}
    for loss, value in runs.items():  # refuse before the pass: the SAEs must be the committed table's
        folder = work / f"{args.arch}-{loss}-{value}"
        if not (folder / "result.json").exists():
            sys.exit(f"{folder} is missing: run the functional.py command in this script's docstring first, with "
                     "the same arguments (its settings key picks the folder)")  # fmt: skip
        got = json.loads((folder / "result.json").read_text())[0]
        want = [r for r in table if r["arch"] == args.arch and r["loss"] == loss and str(r["value"]) == str(value)]
        if not want or any(got[k] != want[0][k] for k in CHECKED):
            sys.exit(f"{folder} does not score as {args.table} says ({', '.join(CHECKED)}): another settings key, or "
                     "a retrained run; rerun functional.py and commit its table first")  # fmt: skip
        saes[loss], rows_of[loss] = SAE.load(folder / "sae")[0].eval(), got
    for loss, value in runs.items() if args.baseline_runs else ():  # another seed's SAE of each loss
        saes[f"{loss}@other"] = SAE.load(args.baseline_runs / f"{args.arch}-{loss}-{value}" / "sae")[0].eval()
    ctx = eval_context(args)
    if not ctx["hook"].endswith("mlp.hook_post"):
        sys.exit(f"the read gain needs the MLP's output matrix: {ctx['hook']} is not a blocks.L.mlp.hook_post hook")
    for loss, sae in ((k, v) for k, v in saes.items() if "@" not in k):  # the table's LM, tokens and evaluation
        if bad := rescored_differs(rows_of[loss], score(sae, ctx)):
            sys.exit(f"{args.arch}-{loss}-{runs[loss]} scores differently on this workspace ({', '.join(bad)}): its "
                     "LM, tokens or cache are not the ones the table was made with; rerun functional.py")  # fmt: skip
    sample = EvalSample.draw(len(ctx["rows"]), ctx["rows"].shape[1], args.eval_tokens, ctx["ev"])
    counts, best, n_cov = top_examples(ctx["model"], saes, ctx["rows"], ctx["hook"], sample, ctx["exclude"],
                                       args.n_examples)  # fmt: skip
    freq = {k: c.double() / n_cov for k, c in counts.items()}
    dec = {k: s.W_dec.detach() for k, s in saes.items()}
    # best cosines once (NaN for dead features); a threshold's unique set is cos < t, as unique() defines it
    *_, cos_kl, cos_mse = unique(dec["kl"], dec["mse"], counts["kl"] > 0, counts["mse"] > 0, args.unique_below)
    cos = {"kl": cos_kl, "mse": cos_mse}
    layer = f"layers.{hook_layer(ctx['hook'])}."
    w_out = next(
        p.detach()
        for n, p in ctx["model"].named_parameters()
        if n.startswith(layer) and n.endswith("fc_out._original_component.weight")
    )
    gain = {k: read_gain(d, w_out) for k, d in dec.items()}
    pieces = token_pieces(ctx["tokenizer"])
    rows = ctx["rows"]
    n_ctx = rows.shape[1]
    report = {"hardware": f"{cpu_model()}, {torch.get_num_threads()} torch threads",
              "command": "python benchmarks/functional_features.py " + " ".join(sys.argv[1:]),
              "arch": args.arch, "runs": rows_of, "unique_below": args.unique_below, "covered_tokens": n_cov,
              "sensitivity": {}, "sets": {}, "unique": {}}  # fmt: skip
    alive_of = {loss: counts[loss] > 0 for loss in cos}
    masks = {t: {k: alive_of[k] & ~(c >= t) for k, c in cos.items()} for t in sorted({*THRESHOLDS, args.unique_below})}
    report["sensitivity"] = {str(t): {loss: int(u.sum()) for loss, u in m.items()} for t, m in masks.items()}
    sigma = torch.linalg.svdvals(w_out)
    report["read_gain_max"] = float(sigma[0] / (w_out.norm() / math.sqrt(w_out.shape[1])))  # the top singular direction
    # a random unit direction inside W_out's row space (rank r of d_mlp): E‖W u‖² = ‖W‖_F² / r, so √(d_mlp / r)
    report["read_gain_row_space"] = math.sqrt(w_out.shape[1] / int(torch.linalg.matrix_rank(w_out)))
    report["pairs"] = pair_overlaps(dec, counts, w_out)
    for loss in ("kl", "mse"):
        uniq, c = masks[args.unique_below][loss], cos[loss]
        vals, idx = best[loss]
        alive = alive_of[loss]
        shares = {
            f: mode_share([int(rows[i // n_ctx, i % n_ctx]) for v, i in zip(vals[f], idx[f]) if v > 0])
            for f in alive.nonzero().flatten().tolist()
        }
        sets = report["sets"][loss] = {"alive": summary(alive, freq[loss], gain[loss], c, shares)}
        for t, m in masks.items():
            sets[f"unique (< {t})"] = summary(m[loss], freq[loss], gain[loss], c, shares)
            sets[f"matched (>= {t})"] = summary(alive & ~m[loss], freq[loss], gain[loss], c, shares)
        feats = sorted(uniq.nonzero().flatten().tolist(), key=lambda f: -float(freq[loss][f]))
        report["unique"][loss] = [
            {"feature": f, "frequency": float(freq[loss][f]), "best_cos": float(c[f]),
             "read_gain": float(gain[loss][f]), "top_token_share": shares[f],
             "examples": [{"value": float(v), "context": context(rows, int(i), pieces, 12, 3)}
                          for v, i in zip(vals[f], idx[f]) if v > 0] if rank < args.n_show else None}
            for rank, f in enumerate(feats)
        ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps(json_safe(report), indent=1, ensure_ascii=False) + "\n")
    (args.out / "features.md").write_text(render(report, args.n_show))
    print((args.out / "features.md").read_text())


def render(r: dict, n_show: int) -> str:
    f = lambda v, s=".3g": "—" if v is None else format(v, s)  # noqa: E731
    kl, mse = r["runs"]["kl"], r["runs"]["mse"]
    lines = [
        f"Hardware: {r['hardware']}. Regenerate: `{r['command']}` (after the functional.py command in "
        "benchmarks/functional_features.py's docstring).",
        "",
        f"{r['arch']}, KL-trained (L0 {kl['l0']:.3g}, CE recovered {kl['ce_recovered_zero']:.4f}) vs MSE-trained "
        f"(L0 {mse['l0']:.3g}, CE recovered {mse['ce_recovered_zero']:.4f}), {r['covered_tokens']:,} held-out "
        f"tokens. Unique: an alive feature whose best decoder cosine with any alive feature of the other SAE is below "
        f"{r['unique_below']} (counts at 0.3 / 0.5 / 0.7: KL "
        + " / ".join(str(r["sensitivity"][t]["kl"]) for t in ("0.3", "0.5", "0.7"))
        + ", MSE "
        + " / ".join(str(r["sensitivity"][t]["mse"]) for t in ("0.3", "0.5", "0.7"))
        + "). Read gain: ‖W_out d̂‖ over a random direction's (1 = read as much as a random direction, 0 = "
        f"invisible to the LM; {r['read_gain_row_space']:.2f} for a random direction inside W_out's row space, "
        f"{r['read_gain_max']:.2f} for its top singular direction). Top-token share: the share of a feature's top "
        "activations (those above 0, at most --n-examples) on its most common token.",
        "",
        "| loss | set | n | median / mean frequency | above 0.1 | top 5%'s share of firings | median best cos "
        "| read gain q25 / median / q75 | median top-token share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for loss in ("kl", "mse"):
        for name, s in r["sets"][loss].items():
            lines.append(f"| {loss} | {name} | {s['n']} | {f(s['median_frequency'])} / {f(s['mean_frequency'])} | "
                         f"{s['n_above_0.1']} | {f(s['top_5pct_share_of_firings'], '.2f')} | "
                         f"{f(s['median_best_cos'])} | "
                         f"{f(s['read_gain_q25'])} / {f(s['read_gain_median'])} / {f(s['read_gain_q75'])} | "
                         f"{f(s['median_top_token_share'])} |")  # fmt: skip
    lines += ["", "Best-match cosines of each pair's alive features, in the hook's space and through W_out (where "
              "the LM reads the hook); `@other`: the same loss, the other seed:", "",
              "| features of | against | space | alive | median best cos | unique < 0.3 / 0.5 / 0.7 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for x in r["pairs"]:
        u = " / ".join(str(x["unique"][t]) for t in ("0.3", "0.5", "0.7"))
        cells = [x["of"], x["against"], x["space"], str(x["alive"]), f(x["median_best_cos"], ".3f"), u]
        lines.append("| " + " | ".join(cells) + " |")
    for loss in ("kl", "mse"):
        lines += ["", f"Most frequent features unique to {loss} (top 3 contexts each, the token in ⟦ ⟧):", "",
                  "| feature | frequency | best cos | read gain | top-token share | top contexts |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for u in r["unique"][loss][:n_show]:
            ctxs = " ".join(f"`{md(a)}⟦{md(t)}⟧{md(b)}`" for a, t, b in (e["context"] for e in u["examples"][:3]))
            lines.append(f"| {u['feature']} | {u['frequency']:.3g} | {u['best_cos']:.3f} | {u['read_gain']:.3f} | "
                         f"{f(u['top_token_share'], '.2f')} | {ctxs} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
