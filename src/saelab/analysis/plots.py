"""Figures of the replication analyses (PNG for people; CSV where DVC should render them)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Histogram edges that never fail: a single value, identical values or no values get a unit-wide
    range around them (numpy raises "Too many bins for data range" on a range near zero)."""
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi - lo < 1e-9 * max(1.0, abs(lo), abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def hist(
    path: Path, series: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 60, log_y: bool = False
) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for v in series.values()]
    edges = bin_edges(np.concatenate(finite) if finite else np.zeros(0), bins)
    for (name, _), v in zip(series.items(), finite):
        ax.hist(v, bins=edges, alpha=0.6, label=f"{name} (n={len(v):,})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    save_figure(fig, path)


def scatter(path: Path, x, y, xlabel: str, ylabel: str, title: str, c=None, clabel: str | None = None) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sc = ax.scatter(x, y, c=c, s=6, alpha=0.7, cmap="coolwarm" if c is not None else None)
    if c is not None:
        fig.colorbar(sc, ax=ax, label=clabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save_figure(fig, path)


def topk_curve(png: Path, csv_path: Path, table: list[dict]) -> None:
    """CE recovered and MSE against k for top-k ablation; 'all' is drawn at the right edge."""
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["k", "ce_recovered_zero", "mse"])
        w.writeheader()
        w.writerows(table)
    ks = [r["k"] for r in table]
    xs = np.arange(len(ks))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(xs, [r["ce_recovered_zero"] for r in table], "o-", color="#4477aa")
    ax.set_ylabel("CE loss recovered (zero)", color="#4477aa")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["mse"] for r in table], "s--", color="#cc3311")
    ax2.set_ylabel("MSE", color="#cc3311")
    ax.set_xticks(xs, [str(k) for k in ks])
    ax.set_xlabel("k (largest feature activations kept per token)")
    ax.set_title("Top-k ablation")
    save_figure(fig, png)
