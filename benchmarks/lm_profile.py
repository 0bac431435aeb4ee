"""Where the lm stage's training step spends its time: torch.profiler over ``lm.train_lm`` (the stage's code).

    python benchmarks/lm_profile.py --out benchmarks/results/lm_profile_cpu.txt [--steps 10] [--warmup 5]

The default params' LM (params.yaml ``lm``: 1 layer, d_model 128, vocab 4,096, batch 32 x 128 tokens)
built by ``lm.build_model`` (TransformerLens 4's bridge) and trained by ``lm.train_lm`` on random token
rows (speed depends on shapes, not on the text); the profiler runs from the ``--warmup``-th optimiser step
(``train_lm``'s ``on_step`` hook) to the end. Writes the wall time per step, the share of it that aten
operators account for (the rest is Python: the bridge's hook points and modules, autograd's bookkeeping,
the optimizer's loop), the operator table, and the time by top-level Python function of the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import load_params  # noqa: E402
from saelab.data import lm  # noqa: E402


def default_lm(params: str, n_steps: int):
    """The params file's lm config for ``n_steps`` optimiser steps, 4,096 random token rows (speed depends on
    shapes, not on the text) and a fresh model built as the stage builds it: (cfg, rows, model)."""
    cfg = load_params(params).lm.model_copy(update={"n_steps": n_steps})
    rows = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(4096, cfg.n_ctx), dtype=np.int64)
    return cfg, rows, lm.build_model(lm.tl_config(cfg))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=10, help="profiled optimiser steps")
    p.add_argument("--warmup", type=int, default=5, help="optimiser steps before the profiler starts")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lm_profile_cpu.txt"))
    args = p.parse_args()
    n_threads = threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    cfg, rows, model = default_lm(args.params, args.warmup + args.steps)
    prof = profile(activities=[ProfilerActivity.CPU], with_stack=True)
    stamps: dict[int, float] = {}

    def on_step(done: int, _model) -> None:
        if done == args.warmup:
            prof.start()
            stamps["start"] = time.perf_counter()

    lm.train_lm(model, rows, cfg, on_step)
    prof.stop()
    wall = (time.perf_counter() - stamps["start"]) / args.steps
    events = prof.key_averages()
    aten = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1e6 / args.steps
    tokens = cfg.batch_size * cfg.n_ctx
    lines = [
        f"# {cpu_model()}, torch {torch.__version__}, {n_threads} threads; lm d_model {cfg.d_model}, "
        f"d_mlp {cfg.d_mlp}, layers {cfg.n_layers}, vocab {cfg.vocab_size}, batch {cfg.batch_size} x {cfg.n_ctx}; "
        f"{args.steps} profiled steps after {args.warmup}",
        f"# python benchmarks/lm_profile.py {' '.join(sys.argv[1:])}",
        f"wall per step (profiler on): {wall * 1e3:.1f} ms ({tokens / wall:,.0f} tokens/s)",
        f"aten operators' self CPU time per step: {aten * 1e3:.1f} ms "
        f"({aten / wall:.0%} of the wall time; the rest is Python, dispatch and the profiler itself)",
        events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50),
        "# by Python call site (self CPU of the ops under each, top 25)",
        prof.key_averages(group_by_stack_n=3).table(
            sort_by="cpu_time_total", row_limit=25, max_name_column_width=50, max_src_column_width=90
        ),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4]))


if __name__ == "__main__":
    main()
