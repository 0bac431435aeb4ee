"""Shared plumbing for the thin scripts in ``stages/``: arguments, params, logging, peak memory."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager

from saelab import threads
from saelab.config import Params, load_params
from saelab.errors import SaelabError
from saelab.io import write_json
from saelab.memory import peak_rss_mb

# Faults a user can cause and fix (bad params, missing or corrupt inputs, no network, NaNs) raise
# SaelabError: one clear line, exit code 2. Anything else is a bug and keeps its traceback.
EXPECTED = (SaelabError,)

log = logging.getLogger("saelab")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def write_timing(path, timing: dict) -> None:
    """Write a stage's wall times and throughputs with its peak memory to ``path`` (timings/*.json).

    Kept out of metrics/, so `dvc exp show` and `dvc metrics diff` lead with the science and
    never list timing noise as a change; the README and benchmarks read these files.
    """
    write_json(path, timing | peak_memory() | {"threads": _torch_threads()})


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.get_num_threads()


def peak_memory() -> dict:
    """Peak resident memory of this process, and peak CUDA memory allocated where CUDA was used."""
    out = {"peak_rss_mb": peak_rss_mb()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


@contextmanager
def run_stage(name: str, args, loader=load_params) -> Params:
    """Load + validate params (with ``loader``), then run the stage body; expected faults print one clear line."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s", stream=sys.stderr)
    start = time.perf_counter()
    try:
        params = loader(args.params)
        log.info('threads: %d (docs/usage.md, "Threads")', threads.configure())
        yield params
    except EXPECTED as err:
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    log.info("done in %.1f s (peak RSS %.0f MB)", time.perf_counter() - start, peak_rss_mb())
