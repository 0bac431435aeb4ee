"""Read throughput of the Parquet activation cache, one process: raw row groups and training batches.

python benchmarks/reader.py data/activations [--batch-size 4096] [--out benchmarks/results/reader_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from saelab import threads
from saelab.data.cache import ActivationCache


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The code measured: ``git describe --always --dirty`` of the working tree, or "unknown" outside a clone."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent)  # fmt: skip
    return done.stdout.strip() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cache", type=Path)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    cache = ActivationCache(args.cache)
    nbytes = cache.n_tokens * cache.d * cache.torch_dtype.itemsize
    start = time.perf_counter()
    for _ in cache.row_groups(0):
        pass
    raw_s = time.perf_counter() - start
    it, n, start = cache.batches(args.batch_size), 0, time.perf_counter()
    while n < cache.n_tokens:
        n += len(next(it))
    batch_s = time.perf_counter() - start
    result = {
        "cache_gb": nbytes / 1e9,
        "d": cache.d,
        "dtype": cache.dtype,
        "n_tokens": cache.n_tokens,
        "row_groups_gb_per_s": nbytes / 1e9 / raw_s,
        "batches_gb_per_s": nbytes / 1e9 / batch_s,
        "batches_tokens_per_s": n / batch_s,
        "batch_size": args.batch_size,
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores",
        "note": "page cache warm",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
