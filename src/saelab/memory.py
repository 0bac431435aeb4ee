"""Peak memory of this process. Standard library only, so benchmarks/ can use it from any environment."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MB).

    Linux's VmHWM, which starts afresh at exec. ``ru_maxrss`` does not: it carries over
    the parent's resident size at fork, so a stage started by a big process (dvc, pytest)
    would report the parent's memory. Elsewhere ``ru_maxrss`` is the fallback.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
