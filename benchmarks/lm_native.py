"""The lm stage's training step through TransformerLens 4's bridge against the same step on the native model the
bridge wraps (``bridge.original_model``, a plain torch module holding the same parameters), with the bridge's own
loss function: speed in interleaved rounds, and whether the weights end bit-identical (issue 27, item 1).

    python benchmarks/lm_native.py --out benchmarks/results/lm_native_cpu.json [--steps 20] [--rounds 3]

The default params' LM (params.yaml ``lm``) on random token rows (speed depends on shapes, not on the text), built
as the stage builds it; each round trains a fresh copy of one initial model ``--steps`` optimiser steps with
``lm.train_lm`` both ways, bridge first in rounds 1, 3, ... and native first in rounds 2, 4, ...
Bit-identity is checked on every round's final weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import load_params  # noqa: E402
from saelab.data import lm  # noqa: E402


class Native(torch.nn.Module):
    """The bridge's native model with the bridge's next-token loss (``return_type="loss"``), no hook points."""

    def __init__(self, bridge):
        super().__init__()
        self.model = bridge.original_model

    def forward(self, tokens: torch.Tensor, return_type: str = "loss") -> torch.Tensor:
        if return_type != "loss":
            raise ValueError("Native computes the training loss only")
        return lm_cross_entropy_loss(self.model(tokens), tokens)


def timed(model, rows, cfg) -> float:
    start = time.perf_counter()
    lm.train_lm(model, rows, cfg)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/lm_native_cpu.json"))
    args = p.parse_args()
    n_threads = threads.configure()
    cfg = load_params(args.params).lm.model_copy(update={"n_steps": args.steps})
    rows = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(4096, cfg.n_ctx), dtype=np.int64)
    torch.manual_seed(cfg.seed)
    init = lm.build_model(lm.tl_config(cfg))
    tokens = args.steps * cfg.batch_size * cfg.n_ctx
    rates: dict[str, list[float]] = {"bridge": [], "native": []}
    identical = []
    for r in range(args.rounds):
        bridge, native = copy.deepcopy(init), copy.deepcopy(init)
        order = [("bridge", bridge), ("native", Native(native))]
        for name, trained in order if r % 2 == 0 else order[::-1]:
            rates[name].append(tokens / timed(trained, rows, cfg))
        a, b = bridge.original_model.state_dict(), native.original_model.state_dict()
        identical.append(all(torch.equal(a[k], b[k]) for k in a))
    med = {k: statistics.median(v) for k, v in rates.items()}
    report = {
        "hardware": f"{cpu_model()}, {n_threads} torch threads, torch {torch.__version__}",
        "command": "python benchmarks/lm_native.py " + " ".join(sys.argv[1:]),
        "steps_per_round": args.steps,
        "tokens_per_round": tokens,
        "tokens_per_s": rates,
        "median_tokens_per_s": med,
        "native_over_bridge": med["native"] / med["bridge"],
        "weights_bit_identical_every_round": all(identical),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
