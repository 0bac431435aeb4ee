"""How close one SAE training step comes to the machine's matmul rate.

A step at d_in x d_sae does five matmuls of 2 * batch * d_in * d_sae FLOP each: encoder and
decoder forward, the two weight gradients, and the gradient into the features (none into
the input). This script times those five matmuls alone (the ceiling for this shape on this
device) and then saelab's ``train_step`` (eager and, with --compile, compiled), and prints
tokens/s, achieved FLOP/s and the fraction of the ceiling.

    python benchmarks/step_roofline.py                       # the default run's shape, on CPU
    python benchmarks/step_roofline.py --shape reference --dtype bf16 --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saelab import threads
from saelab.config import SAEConfig
from saelab.registry import build
from saelab.training.trainer import Trainer, train_step

SHAPES = {
    "default": (512, 2048, 2048),
    "reference": (2048, 16384, 4096),
}  # d_in, d_sae, batch (the reference gelu-1l run)


def clock(fn, device: torch.device, seconds: float) -> float:
    """Mean seconds per call of ``fn`` after three warm-up calls, over at least ``seconds``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 5:
        fn()
        n += 1
        if n % 5 == 0:
            sync()  # keeps the queue of launched kernels short on a GPU
    sync()
    return (time.perf_counter() - start) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="also time the compiled forward + losses")
    p.add_argument("--seconds", type=float, default=15.0, help="per variant, over all rounds")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    d_in, d_sae, batch = SHAPES[args.shape]
    device = torch.device(args.device)
    flop_per_token = 5 * 2 * d_in * d_sae
    mm_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    x = torch.randn(batch, d_in, device=device, dtype=mm_dtype)
    w = torch.randn(d_in, d_sae, device=device, dtype=mm_dtype)
    f = torch.randn(batch, d_sae, device=device, dtype=mm_dtype)

    def five_matmuls():
        h = x @ w  # encoder forward
        r = f @ w.T  # decoder forward (same sizes)
        x.T @ h  # encoder weight gradient
        f.T @ r  # decoder weight gradient
        r @ w  # gradient into the features

    timed = {"matmul_ceiling": five_matmuls}
    for name, compiled in [("eager", False)] + ([("compiled", True)] if args.compile else []):
        # The pipeline's own Trainer: its Adam (fused), its losses (compiled or not), its NaN-check policy.
        cfg = SAEConfig(d_sae=d_sae, batch_size=batch, compile=compiled)
        t = Trainer(build(cfg, d_in, seed=0).to(device), cfg, device)
        data = torch.randn(batch, d_in, device=device)
        timed[name] = lambda t=t, data=data: train_step(
            t.sae, t.opt, data, args.dtype == "bf16", forward=t.call, check=t.check_each_step
        )
    # Interleaved rounds, best of each: a shared machine's noise hits every variant alike.
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(args.rounds):
        for name, fn in timed.items():
            best[name] = min(best[name], clock(fn, device, args.seconds / args.rounds))
    result = {
        "device": str(device),
        "shape": {"d_in": d_in, "d_sae": d_sae, "batch": batch},
        "dtype": args.dtype,
        "torch": torch.__version__,
        "flop_per_token": flop_per_token,
        "rounds": args.rounds,
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for name, seconds in best.items():
        result[f"{name}_tokens_per_s"] = batch / seconds
        result[f"{name}_tflop_per_s"] = flop_per_token * batch / seconds / 1e12
        if name != "matmul_ceiling":
            result[f"{name}_fraction_of_matmul_ceiling"] = best["matmul_ceiling"] / seconds

    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
