"""Values of a family of runs at a given L0, interpolated in log L0: the one comparison "at equal L0" that the
frontier, the synthetic pipeline's recovery and the questions read (numpy only, so none of them pulls in plotting
or the SAE registry to use it)."""

from __future__ import annotations

import math

import numpy as np


def at_l0(points: list[tuple[float, float | None]], l0: float) -> float | None:
    """A value at ``l0`` from (L0, value) points of one family of runs: linear in log L0 between the two nearest
    points (points with L0 <= 0 or no value left out); None outside their range."""
    pts = sorted((a, b) for a, b in points if a > 0 and b is not None)
    if len(pts) < 2 or not pts[0][0] <= l0 <= pts[-1][0]:
        return None
    return float(np.interp(math.log(l0), [math.log(a) for a, _ in pts], [b for _, b in pts]))
