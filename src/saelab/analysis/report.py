"""Figures: the log10 feature-density histogram and the SAE training curves.

Each figure is a PNG for people plus a CSV that ``dvc plots show`` can render.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from saelab.errors import MissingInput

CURVES = ("loss", "mse", "l1", "l0", "frac_dead_window", "frac_ultra_low_window", "lr")
NOT_CURVES = ("window_tokens",)  # logged for resumption arithmetic, not a training curve


def density_histogram(freq: np.ndarray, n_tokens: int, bins: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Histogram of log10 frequency over features that fired; returns (edges, counts, n_dead).

    The left edge is log10(1 / n_tokens), the smallest frequency measurable on this sample.
    """
    alive = freq[freq > 0]
    lo = np.log10(1.0 / n_tokens)
    edges = np.linspace(lo, 0.0, bins + 1)
    counts, _ = np.histogram(np.log10(alive), bins=edges)
    return edges, counts, int((freq == 0).sum())


def plot_density(out_png: Path, out_csv: Path, freq: np.ndarray, n_tokens: int, bins: int, ultra_low: float) -> None:
    edges, counts, n_dead = density_histogram(freq, n_tokens, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    with open(out_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["log10_frequency", "n_features"])
        w.writerows([[f"{c:.4f}", int(n)] for c, n in zip(centres, counts)])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(centres, counts, width=edges[1] - edges[0], color="#4477aa")
    ax.axvline(np.log10(ultra_low), color="#cc3311", ls="--", label=f"ultra-low threshold ({ultra_low:g})")
    ax.set_xlabel(f"log10 feature frequency (on {n_tokens:,} eval tokens)")
    ax.set_ylabel("features")
    ax.set_title(f"Feature density: {len(freq):,} features, {n_dead:,} dead (never fired)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def read_dvclive_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    name = path.stem
    return np.array([float(r["step"]) for r in rows]), np.array([float(r[name]) for r in rows])


def plot_curves(out_png: Path, live_dir: Path, batch_size: int) -> None:
    metric_dir = live_dir / "plots" / "metrics"
    names = [n for n in CURVES if (metric_dir / f"{n}.tsv").exists()]
    # each architecture's own loss term (auxk, l0_penalty, l1_weighted, ...) after the shared curves
    names += sorted(p.stem for p in metric_dir.glob("*.tsv") if p.stem not in CURVES and p.stem not in NOT_CURVES)
    if not names:
        raise MissingInput(f"{metric_dir}: no DVCLive curves found (rerun `dvc repro train`)")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.0 * len(names)), sharex=True)
    for ax, name in zip(np.atleast_1d(axes), names):
        steps, values = read_dvclive_tsv(metric_dir / f"{name}.tsv")
        ax.plot(steps * batch_size / 1e6, values, lw=1)
        ax.set_ylabel(name)
        if name in ("loss", "mse", "l0"):
            ax.set_yscale("log")
    np.atleast_1d(axes)[-1].set_xlabel("training tokens (millions)")
    fig.suptitle("SAE training curves")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
