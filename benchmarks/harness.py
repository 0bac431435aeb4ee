"""What every trainer in benchmarks/trainers.py shares: the data, the clock and the report.

Imports only numpy, torch, safetensors and the stdlib-only saelab.memory, so it runs in the
SAELens environment too (trainers.py puts src/ on its PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from saelab.memory import peak_rss_mb  # stdlib only: importable from the SAELens environment via PYTHONPATH


def worker_env() -> dict:
    """Environment of a worker process: benchmarks/ and src/ importable, from any venv, ahead of any PYTHONPATH the
    caller set (kept: packages installed with ``pip --target``, as on a machine with no index)."""
    here = Path(__file__).resolve().parent
    path = [str(here), str(here.parent / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


class TimedBatches:
    """``n_steps`` batches of ``batch_size`` rows of a .npy file, in order, as CPU tensors.

    The clock starts when batch ``warmup`` is asked for, so the first steps (allocation,
    kernel selection, compilation) are left out of tokens/s for every trainer alike.
    """

    def __init__(self, npy: Path, batch_size: int, n_steps: int, warmup: int, source=None):
        self.data = np.load(npy, mmap_mode="r")
        self.batch_size, self.n_steps, self.warmup = batch_size, n_steps, warmup
        self.source = source  # another iterator of the same batches (the Parquet reader), timed the same way
        self.i, self.t0 = 0, None
        self.curve: list[tuple[float, float]] = []  # (clock, batch MSE) per step: see note()

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.i >= self.n_steps:
            raise StopIteration
        if self.i == self.warmup:
            if torch.cuda.is_initialized():  # the warm-up steps' kernels finish before the clock starts
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        lo = self.i * self.batch_size
        self.i += 1
        if self.source is not None:
            return next(self.source)
        return torch.from_numpy(np.array(self.data[lo : lo + self.batch_size]))  # a writable copy

    def note(self, mse: float) -> None:
        """After a step: the MSE of its batch before the update, with the clock. Every batch is seen
        once, so this is a held-out estimate of the SAE's MSE at that time (per token, summed over dims)."""
        self.curve.append((time.perf_counter(), float(mse)))

    def timed_tokens(self) -> int:
        return (self.n_steps - self.warmup) * self.batch_size


def finish(out: Path, batches: TimedBatches, weights: dict, device: str, extra: dict | None = None) -> None:
    """Stop the clock, save the SAE as W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec; write result.json."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - batches.t0
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()}, str(out / "sae.safetensors"))
    result = {
        "timed_tokens": batches.timed_tokens(),
        "timed_seconds": seconds,
        "tokens_per_s": batches.timed_tokens() / seconds,
        "steps": batches.n_steps,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "curve": [[t - batches.t0, m] for t, m in batches.curve],  # seconds (negative in the warm-up), batch MSE
        **(extra or {}),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
