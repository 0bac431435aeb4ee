"""Gather ``dvc exp show --json`` into the L0 vs CE-recovered frontier of a sweep.

    dvc exp run --queue -S 'sae.l1_coeff=0.5,1.0,2.0'
    dvc queue start -j 1          # then wait: dvc queue status
    python -m saelab.frontier --out plots/frontier     # table (CSV + Markdown) and PNG
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = "metrics/evaluate.json"
COLUMNS = ("l1_coeff", "l0", "ce_recovered_zero", "explained_variance", "frac_dead")


def _walk(node, found: list) -> None:
    """Every (name, data) pair in DVC's nested exp-show JSON that has both params and metrics."""
    if isinstance(node, dict):
        data = node.get("data")
        if isinstance(data, dict) and data.get("params") and data.get("metrics"):
            rev = str(node.get("rev", "?"))
            found.append((node.get("name") or data.get("name") or (rev[:7] if len(rev) == 40 else rev), data))
        for v in node.values():
            _walk(v, found)
    elif isinstance(node, list):
        for v in node:
            _walk(v, found)


def runs(exp_show: list | dict) -> list[tuple[str, dict]]:
    """(name, data) of every run (baseline and experiments) in ``dvc exp show --json`` output."""
    found: list = []
    _walk(exp_show, found)
    return found


def points(exp_show: list | dict) -> list[dict]:
    """One row per experiment (and baseline) that has evaluate metrics, sorted by l1_coeff."""
    rows, seen = [], set()
    for name, data in runs(exp_show):
        try:
            params = data["params"]["params.yaml"]["data"]
            metrics = data["metrics"][METRICS]["data"]
        except (KeyError, TypeError):
            continue
        row = {"name": name, "l1_coeff": params["sae"]["l1_coeff"], **{k: metrics.get(k) for k in COLUMNS[1:]}}
        key = (row["l1_coeff"], row["l0"], row["ce_recovered_zero"])
        if None not in key and key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: r["l1_coeff"])


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frontier.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
    lines = ["| experiment | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [f"| {r['name']} | " + " | ".join(f"{r[c]:.4g}" for c in COLUMNS) + " |" for r in rows]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["l0"] for r in rows], [r["ce_recovered_zero"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"l1={r['l1_coeff']:g}", (r["l0"], r["ce_recovered_zero"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("L0 (features per token)")
    ax.set_ylabel("CE loss recovered (zero ablation)")
    ax.set_title("Sparsity / fidelity frontier")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("plots/frontier"))
    p.add_argument("--json", type=Path, help="read a saved `dvc exp show --json` instead of running it")
    args = p.parse_args(argv)
    raw = args.json.read_text() if args.json else subprocess.run(
        ["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
    rows = points(json.loads(raw))
    if not rows:
        raise SystemExit(f"no experiment with {METRICS} found in `dvc exp show`; run a sweep first (see --help)")
    write(rows, args.out)
    print((args.out / "frontier.md").read_text())


if __name__ == "__main__":
    main()
