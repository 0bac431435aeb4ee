"""How many threads a stage or benchmark gives torch, BLAS and pyarrow (docs/usage.md, "Threads").

Two torch processes that each take every core of a small machine slow each other far more than
twice (issue 27: 3.0k tokens/s beside another training run with default threads, 39k with one
thread each). So every stage takes ``SAELAB_THREADS`` threads where that is set, and otherwise
torch's own default (its physical cores, or ``OMP_NUM_THREADS`` where set) lowered to the cores it
may run on (CPU affinity and a cgroup quota), divided by the number of ``dvc queue`` workers of its
repository, so that ``dvc queue start -j 2`` splits the machine between its two experiments without
being told.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from pathlib import Path

from saelab.errors import InputError

ENV = "SAELAB_THREADS"


def cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, lowered by a cgroup v2 CPU quota if one is set at
    ``cgroup`` (the root one; cgroup v1 and nested quotas are not read). An unreadable or malformed quota is
    ignored."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux, or no affinity to read
        n = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota == "max":
            return n
        return max(1, min(n, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        return n


def queue_workers(root: str | None = None, proc: Path = Path("/proc")) -> int:
    """Live ``dvc exp queue-worker`` workers of the repository ``root`` (default: DVC_ROOT, which DVC sets
    for every stage it runs); 1 when there are none. DVC names worker ``num`` of a repository
    ``dvc-exp-<sha256(<root>/.dvc/tmp/exps/celery)[:6]>-<num>@localhost`` and celery rewrites the worker's
    command line to ``[celeryd: <name>:MainProcess] -active- (exp queue-worker <name> ...)``; distinct
    names are counted, so a process seen twice (or a wrapper with the same command line) counts once."""
    root = root if root is not None else os.environ.get("DVC_ROOT")
    if not root:
        return 1
    wdir = os.path.join(root, ".dvc", "tmp", "exps", "celery")
    worker = re.compile(
        rb"queue-worker[\x00 ]+(dvc-exp-%s-\d+@localhost)" % hashlib.sha256(wdir.encode()).hexdigest()[:6].encode()
    )
    names = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            names.update(worker.findall(cmdline.read_bytes()))
        except OSError:  # the process ended while we looked
            continue
    return max(1, len(names))


@functools.cache
def torch_default() -> int:
    """The intra-op threads torch chose for this process before configure() changed them (physical cores,
    or OMP_NUM_THREADS where set at start-up)."""
    import torch

    return torch.get_num_threads()


def threads(jobs: int | None = None) -> int:
    """``SAELAB_THREADS`` if set (a positive integer), else min(torch_default(), cores()) // ``jobs``, the
    processes sharing the cores (default: queue_workers()), at least 1."""
    value = os.environ.get(ENV)
    if value is None or value == "":
        return max(1, min(torch_default(), cores()) // (queue_workers() if jobs is None else jobs))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(
            f"{ENV}={value!r}: must be a positive integer (threads per process); "
            "unset it for the default (docs/usage.md, 'Threads')"
        )
    return n


def configure() -> int:
    """Set torch's intra-op threads, pyarrow's CPU pool and the OpenMP/MKL defaults of child processes to
    threads(); returns the count. torch's inter-op pool is left alone: saelab runs no parallel ops."""
    import pyarrow
    import torch

    torch_default()  # recorded before the first change
    n = threads()
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    pyarrow.set_cpu_count(n)
    return n
