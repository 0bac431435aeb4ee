"""Gather ``dvc exp show --json`` into the L0 vs CE-recovered frontier of a sweep.

    dvc exp run --queue -S 'sae.l1_coeff=0.5,1.0,2.0'
    dvc exp run --queue -S sae.architecture=topk -S 'sae.topk.k=16,32,64'
    dvc queue start -j 1          # then wait: dvc queue status
    python -m research.frontier --out plots/frontier     # table (CSV + Markdown) and PNG

Each run is labelled by its architecture and that architecture's sparsity knob (``KNOB``); the
plot draws one line per architecture.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

import saelab.saes  # noqa: F401  (registers the built-in architectures)
from saelab import registry

METRICS = "metrics/evaluate.json"
COLUMNS = ("architecture", "knob", "value", "l0", "ce_recovered_zero", "explained_variance", "frac_dead")
METRIC_COLUMNS = COLUMNS[3:]


def knob(sae_params: dict) -> tuple[str, str, float]:
    """(architecture, knob name, its value) of a run's ``sae`` params (architecture absent = standard). The
    knob is the architecture class's own ``KNOB`` (saelab.registry); an unknown architecture is refused."""
    arch = sae_params.get("architecture", "standard")
    section, key = registry.knob(arch)
    value = (sae_params.get(section) or {}).get(key) if section else sae_params.get(key)
    return arch, f"{section}.{key}" if section else key, value


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
    """One row per experiment (and baseline) that has evaluate metrics, sorted by architecture and knob."""
    rows, seen = [], set()
    for name, data in runs(exp_show):
        try:
            params = data["params"]["params.yaml"]["data"]
            metrics = data["metrics"][METRICS]["data"]
        except (KeyError, TypeError):
            continue
        arch, name_of_knob, value = knob(params["sae"])
        row = {
            "name": name,
            "architecture": arch,
            "knob": name_of_knob,
            "value": value,
            **{k: metrics.get(k) for k in METRIC_COLUMNS},
        }
        key = (arch, value, row["l0"], row["ce_recovered_zero"])
        if None not in key and key not in seen:
            seen.add(key)
            rows.append(row)
    return sorted(rows, key=lambda r: (r["architecture"], r["value"]))


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frontier.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
    lines = ["| experiment | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines += [
        f"| {r['name']} | "
        + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS)
        + " |"
        for r in rows
    ]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    import matplotlib  # here, not at import: the recover stage imports knob() and need not load plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch in sorted({r["architecture"] for r in rows}):
        rs = sorted((r for r in rows if r["architecture"] == arch), key=lambda r: r["l0"])
        ax.plot([r["l0"] for r in rs], [r["ce_recovered_zero"] for r in rs], "o-", label=arch)
        for r in rs:
            ax.annotate(f"{r['knob'].split('.')[-1]}={r['value']:g}", (r["l0"], r["ce_recovered_zero"]), fontsize=8)
    ax.legend(fontsize=8)
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
    raw = (
        args.json.read_text()
        if args.json
        else subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
    )
    rows = points(json.loads(raw))
    if not rows:
        raise SystemExit(f"no experiment with {METRICS} found in `dvc exp show`; run a sweep first (see --help)")
    write(rows, args.out)
    print((args.out / "frontier.md").read_text())


if __name__ == "__main__":
    main()
