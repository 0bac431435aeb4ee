"""The embedded LM's loss through its training, on evaluate's CE rows: the curve the compute equivalent of a
spliced model is read from (docs/metrics.md, "Compute equivalent").

python benchmarks/lm_curve.py --workspace <ws> --every 50 --out benchmarks/results/layers_cpu/lm_curve.json

Retrains the workspace's LM exactly as the lm stage does (saelab.data.lm.train_embedded, same params and text),
measuring after every ``--every`` steps (and before the first) the mean next-token CE over evaluate's CE rows of
data/tokens/eval.parquet (the rows splice and evaluate use: evaluate.seed, min(max_tokens, ce_max_tokens)), so
the last point is the clean CE of the splice stage. Then checks that the retrained weights equal the workspace's
models/lm (same_weights): only then is the curve that LM's. The measuring leaves training untouched (no
randomness, no gradients; tests/test_lm.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from saelab import threads
from saelab.config import load_params
from saelab.data import lm
from saelab.data.text import read_texts
from saelab.data.tokens import read_rows
from saelab.eval.evaluate import EvalSample, token_ce
from saelab.io import load_weights, sha256_dir


@torch.no_grad()
def mean_ce(model, rows: np.ndarray, batch_rows: int) -> float:
    """Mean next-token CE (nats) over every predicted position of ``rows``, as the splice stage's clean CE."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(rows), batch_rows):
        tokens = torch.from_numpy(rows[i : i + batch_rows].astype(np.int64))
        ce = token_ce(model(tokens), tokens)
        total, n = total + ce.double().sum().item(), n + ce.numel()
    model.train(was_training)
    return total / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--every", type=int, default=50, help="steps between measurements")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    ws = args.workspace
    params = load_params(ws / "params.yaml")
    cfg, ev = params.lm, params.evaluate
    rows = read_rows(ws / "data/tokens/eval.parquet")
    sample = EvalSample.draw(len(rows), rows.shape[1], ev.max_tokens, ev)
    ce_rows = rows[sample.ce]
    tokens_per_step = cfg.batch_size * cfg.n_ctx
    curve: list[list[float]] = []

    def measure(step: int, model) -> None:
        if step % args.every == 0 or step == cfg.n_steps:
            curve.append([step, step * tokens_per_step, mean_ce(model, ce_rows, ev.batch_rows)])
            print(f"step {step}: CE {curve[-1][2]:.4f}", flush=True)

    start = time.perf_counter()
    texts = [read_texts(ws / f"data/text/{split}.parquet") for split in ("train", "eval")]
    model, _, _, metrics = lm.train_embedded(cfg, *texts, on_step=measure)
    theirs = load_weights(ws / "models/lm/model.safetensors")
    ours = model.state_dict()
    diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in theirs)
    result = {
        "definition": 'docs/metrics.md, "Compute equivalent"; CE over evaluate\'s CE rows of data/tokens/eval.parquet',
        "columns": ["step", "train_tokens", "ce"],
        "curve": curve,
        "ce_rows": len(ce_rows),
        "ce_tokens": int(len(ce_rows) * (rows.shape[1] - 1)),
        "n_steps": cfg.n_steps,
        "train_tokens": cfg.n_steps * tokens_per_step,
        "lm_eval_ce": metrics["eval_ce"],
        "same_weights": diff == 0.0,
        "max_abs_weight_diff": diff,
        "lm_sha256": sha256_dir(ws / "models/lm"),
        "seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(curve)} points, final CE {curve[-1][2]:.4f}, same weights as the workspace's LM: {diff == 0.0}")
    if diff != 0.0:  # written for inspection, but not the workspace LM's curve
        raise SystemExit(f"the retrained LM differs from {ws / 'models/lm'} (max |diff| {diff:g}): not its curve")


if __name__ == "__main__":
    main()
