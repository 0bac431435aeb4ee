"""The activation at one hook from the full LM pass (``hooks.capture``: every block, the final norm and the
unembedding) against the pass that stops at the hook (``hooks.activation``: what the activations stage, the
stream source and the statistics of evaluate, compare and analyze use): speed in interleaved rounds, and whether
the two agree bit for bit on every round.

    python benchmarks/activation_pass.py --out benchmarks/results/activation_pass_cpu.json [--rows 64] [--rounds 21]

The committed LM (``models/lm``) on the first ``--rows`` rows of ``data/tokens/eval.parquet`` (run ``dvc repro
tokens lm`` first), hook ``activations.hook`` from params.yaml; the full pass first in even rounds, the stopped
pass first in odd ones; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import load_params  # noqa: E402
from saelab.data.hooks import activation, capture  # noqa: E402
from saelab.data.lm import load_lm  # noqa: E402
from saelab.data.tokens import read_rows  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--lm", default="models/lm")
    p.add_argument("--tokens", default="data/tokens/eval.parquet")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/activation_pass_cpu.json"))
    args = p.parse_args()
    n_threads = threads.configure()
    hook = load_params(args.params).activations.hook
    model = load_lm(args.lm, "cpu").model
    tokens = torch.from_numpy(read_rows(args.tokens)[: args.rows].astype(np.int64))
    passes = {"full": lambda: capture(model, tokens, hook)[1], "stopped": lambda: activation(model, tokens, hook)}
    seconds: dict[str, list[float]] = {k: [] for k in passes}
    identical = []
    with torch.no_grad():
        for f in passes.values():  # warm-up
            f()
        for r in range(args.rounds):
            out = {}
            for name in list(passes) if r % 2 == 0 else list(passes)[::-1]:
                start = time.perf_counter()
                out[name] = passes[name]()
                seconds[name].append(time.perf_counter() - start)
            identical.append(torch.equal(out["full"], out["stopped"]))
    med = {k: statistics.median(v) for k, v in seconds.items()}
    report = {
        "hardware": f"{cpu_model()}, {n_threads} torch threads, torch {torch.__version__}",
        "command": " ".join(["python benchmarks/activation_pass.py", *sys.argv[1:]]),
        "hook": hook,
        "tokens_per_pass": tokens.numel(),
        "seconds": seconds,
        "median_tokens_per_s": {k: tokens.numel() / v for k, v in med.items()},
        "stopped_over_full": med["full"] / med["stopped"],
        "bit_identical_every_round": all(identical),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"}, indent=1))


if __name__ == "__main__":
    main()
