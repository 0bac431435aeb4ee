"""An LM-size ladder: the embedded LM retrained at smaller widths, the same recipe and text, and every spliced CE
read as the size of plain LM that has that loss (docs/metrics.md, "Compute equivalent", "Size equivalent").

    python benchmarks/lm_ladder.py --workspace <ws> --widths 32 64 96 --splice <metrics/splice/seed-N.json> \
        --out benchmarks/results/lm_ladder_cpu

Each rung is ``saelab.data.lm.train_embedded`` with the workspace's ``lm`` params but ``d_model`` = width and
``d_mlp`` = 4 x width (heads kept, so d_head shrinks with the width); the workspace's own LM is the top rung (not
retrained). Every rung's CE is measured on evaluate's CE rows of the workspace's eval tokens, the rows splice and
evaluate use; the top rung's must equal the splice file's ``ce_clean`` (to 1e-9 nats), which ties the ladder to
the splice's LM and tokens. Parameters are counted without the embedding and unembedding (Kaplan et al.'s N) and
in total. The size equivalent of a loss L: linear interpolation in log N between the two rungs whose CEs bracket
L; undefined outside the ladder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from lm_curve import mean_ce  # noqa: E402
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import load_params  # noqa: E402
from saelab.data import lm  # noqa: E402
from saelab.data.text import read_texts  # noqa: E402
from saelab.data.tokens import read_rows  # noqa: E402
from saelab.eval.evaluate import EvalSample  # noqa: E402

EMBEDDINGS = ("tok_embed", "pos", "head")  # the native model's embedding, positional and unembedding modules


def n_params(model) -> tuple[int, int]:
    """(parameters without the embeddings and unembedding, all parameters) of a bridge's native model."""
    named = list(model.original_model.named_parameters())
    tops = {n.split(".")[0] for n, _ in named}
    if not {"tok_embed", "head"} <= tops:  # a renamed or foreign model: N would silently include the embeddings
        raise SystemExit(f"n_params: no tok_embed / head among the model's modules {sorted(tops)}")
    total = sum(p.numel() for _, p in named)
    return total - sum(p.numel() for n, p in named if n.split(".")[0] in EMBEDDINGS), total


def size_equivalent(rungs: list[tuple[float, float]], loss: float) -> float | None:
    """The N at which the ladder (N, CE) pairs reach ``loss``, linear in log N between the bracketing rungs
    (sorted by N; a CE that does not fall strictly with N is refused); None outside the ladder's CE range."""
    pts = sorted(rungs)
    if any(l1 >= l0 for (_, l0), (_, l1) in zip(pts, pts[1:])):
        raise ValueError(f"the ladder's CE does not fall strictly with N: {pts}")
    for (n0, l0), (n1, l1) in zip(pts, pts[1:]):
        if min(l0, l1) <= loss <= max(l0, l1) and l0 != l1:
            w = (l0 - loss) / (l0 - l1)
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--widths", type=int, nargs="+", required=True, help="d_model of each smaller rung")
    p.add_argument("--splice", type=Path, required=True, help="a splice stage's metrics of the workspace's LM")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    threads.configure()
    ws = args.workspace
    params = load_params(ws / "params.yaml")
    cfg, ev = params.lm, params.evaluate
    if any(w <= 0 or w >= cfg.d_model or w % cfg.n_heads for w in args.widths):
        sys.exit(f"--widths must be positive, below the workspace's d_model ({cfg.d_model}) and multiples of n_heads "
                 f"({cfg.n_heads})")  # fmt: skip
    if cfg.source != "embedded" or cfg.d_mlp != 4 * cfg.d_model:
        sys.exit("the ladder retrains the embedded LM with d_mlp = 4 x d_model: lm.source must be embedded and "
                 f"lm.d_mlp 4 x lm.d_model (here {cfg.source}, {cfg.d_mlp} vs {cfg.d_model})")  # fmt: skip
    splice = json.loads(args.splice.read_text())
    rows = read_rows(ws / "data/tokens/eval.parquet")
    ce_rows = rows[EvalSample.draw(len(rows), rows.shape[1], ev.max_tokens, ev).ce]
    loaded = lm.load_lm(ws / "models/lm")
    built = {k: loaded.config["tl_config"].get(k) for k in ("d_model", "d_mlp", "n_heads", "n_layers", "n_ctx")}
    if built != {k: getattr(cfg, k) for k in built} or loaded.config["tl_config"].get("d_vocab") != cfg.vocab_size:
        sys.exit(f"{ws / 'models/lm'} was not built from {ws / 'params.yaml'}'s lm section ({built}): rerun dvc repro")
    top = loaded.model
    top_ce = mean_ce(top, ce_rows, ev.batch_rows)
    if abs(top_ce - splice["ce_clean"]) > 1e-9:
        sys.exit(f"the workspace LM's CE on the CE rows is {top_ce:.9f}, the splice file's ce_clean "
                 f"{splice['ce_clean']:.9f}: not the same LM or tokens")  # fmt: skip
    texts = [read_texts(ws / f"data/text/{split}.parquet") for split in ("train", "eval")]
    rungs = []
    for width in sorted(args.widths):
        start = time.perf_counter()
        model, tok, _, metrics = lm.train_embedded(
            cfg.model_copy(update={"d_model": width, "d_mlp": 4 * width}), *texts
        )
        if tok.to_str() != loaded.tokenizer.to_str():
            sys.exit("a rung's tokenizer differs from the workspace's: its CE would be on other tokens")
        n, total = n_params(model)
        rungs.append({"d_model": width, "n_params_non_embedding": n, "n_params": total,
                      "ce": mean_ce(model, ce_rows, ev.batch_rows), "lm_eval_ce": metrics["eval_ce"],
                      "seconds": time.perf_counter() - start})  # fmt: skip
        print(rungs[-1], flush=True)
    n, total = n_params(top)
    rungs.append({"d_model": cfg.d_model, "n_params_non_embedding": n, "n_params": total, "ce": top_ce,
                  "lm_eval_ce": None, "seconds": None})  # fmt: skip
    pts = [(r["n_params_non_embedding"], r["ce"]) for r in rungs]
    losses = {"clean": splice["ce_clean"], "all": splice["all"]["ce"]}
    losses |= {f"alone:{h}": splice["ce_clean"] + row["ce_increase_alone"] for h, row in splice["per_site"].items()}
    equivalents = {}
    for name, loss in losses.items():
        n_eq = size_equivalent(pts, loss)
        equivalents[name] = {"ce": loss, "n_params_non_embedding": n_eq,
                             "share_of_lm": None if n_eq is None else n_eq / n}  # fmt: skip
    report = {
        "definition": 'docs/metrics.md, "Size equivalent"; CE over evaluate\'s CE rows of the workspace',
        "hardware": f"{cpu_model()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/lm_ladder.py " + " ".join(sys.argv[1:]),
        "ce_tokens": int(len(ce_rows) * (rows.shape[1] - 1)),
        "rungs": rungs,
        "equivalents": equivalents,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ladder.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"Hardware: {report['hardware']}. Command: `{report['command']}`. CE on {report['ce_tokens']:,} tokens "
             "(evaluate's CE rows); N = parameters without embeddings.", "",
             "| d_model | N | all parameters | CE |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {r['d_model']} | {r['n_params_non_embedding']:,} | {r['n_params']:,} | {r['ce']:.4f} |" for r in rungs
    ]
    lines += ["", "| loss | CE | size equivalent N | share of the LM's N |", "|---|---|---|---|"]
    for name, e in equivalents.items():
        n_eq = "n/a" if e["n_params_non_embedding"] is None else f"{e['n_params_non_embedding']:,.0f}"
        share = "n/a" if e["share_of_lm"] is None else f"{e['share_of_lm']:.2f}"
        lines.append(f"| {name} | {e['ce']:.4f} | {n_eq} | {share} |")
    (args.out / "ladder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
