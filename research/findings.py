"""Gather the replication quantities of several training regimes into one findings table.

Each regime is a `dvc exp run` of the default pipeline with one param changed; every run trains
its own seeds with their own data orders (docs/metrics.md, "Data order"). The table gives, per
quantity, its value in each regime, the reference's value, the criterion a value must meet to count as
replicating the reference's claim, and a verdict (**holds in every regime**, **holds in some**,
**does not replicate**, **holds in every measured regime**, **holds / fails in the one regime
measured**, **not measured**, or **reported, no claim tested**; docs/metrics.md, "Findings criteria")::

    dvc exp run -n regime-lr1e-3 -S sae.lr=0.001
    dvc exp run -n regime-l1-2 -S sae.l1_coeff=2.0
    dvc exp run -n regime-tokens-5x -S sae.n_tokens=10000000 -S 'seeds=[0]'   # one seed: time
    python -m research.findings --out findings          # reads `dvc exp show --json` and each run's metrics files
    python -m research.findings --json findings/runs.json --out findings       # from the committed copy
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from research.frontier import runs
from saelab.io import write_json

EVAL, ANALYSIS, COMPARE = "metrics/evaluate.json", "metrics/analysis.json", "metrics/compare.json"
DETAIL = "metrics/evaluate_detail.json"
FILES = (EVAL, DETAIL, ANALYSIS, COMPARE)
# One changed param per regime (seeds aside: the long regime may train fewer seeds).
REGIMES = {
    "default": {},
    "lr 1e-3": {"sae.lr": 0.001},
    "l1_coeff 2.0": {"sae.l1_coeff": 2.0},
    "5x SAE tokens": {"sae.n_tokens": 10_000_000},
}


@dataclass(frozen=True)
class Quantity:
    name: str
    file: str
    key: str
    reference: str  # the reference post's value or claim, as text
    criterion: str  # what a value must satisfy to replicate the claim, as text
    holds: Callable[[float, dict], bool] | None  # (value, all metrics of the run) -> bool; None = no claim to test


def _m(run: dict, file: str, key: str):
    return run.get(file, {}).get(key)


def _above(v: float, baseline: float | None, margin: float = 0.0) -> bool | None:
    """v > baseline + margin; None (untested) when the run has no baseline."""
    return None if baseline is None else v > baseline + margin


def _pair(key: str) -> str:
    return f"seed0_vs_seed1_{key}"


QUANTITIES = [
    Quantity("CE loss recovered (zero ablation)", EVAL, "ce_recovered_zero", "0.92", ">= 0.90", lambda v, r: v >= 0.90),
    Quantity(
        "mean ablation recovers (vs zero)", DETAIL, "mean_ablation_recovered_zero", "0.25", "> 0", lambda v, r: v > 0
    ),
    Quantity("L0", EVAL, "l0", "aim < 10-20", "<= 20", lambda v, r: v <= 20),
    Quantity("dead features", EVAL, "frac_dead", "0", "< 0.01", lambda v, r: v < 0.01),
    Quantity("ultra-low cluster share", EVAL, "frac_ultra_low", "~0.60", "> 0.5", lambda v, r: v > 0.5),
    Quantity(
        "cluster encoder sameness (share cos > 0.95)",
        ANALYSIS,
        "ultra_low_enc_share_cos_above",
        "0.975",
        ">= 0.9",
        lambda v, r: v >= 0.9,
    ),
    Quantity(
        "cluster encoder cosine with its mean, median",
        ANALYSIS,
        "ultra_low_enc_cos_median",
        "> 0.95",
        "> 0.9",
        lambda v, r: v > 0.9,
    ),
    Quantity(
        "cluster decoder sameness (share cos > 0.95)",
        ANALYSIS,
        "ultra_low_dec_share_cos_above",
        "low",
        "< 0.1",
        lambda v, r: v < 0.1,
    ),
    Quantity(
        "cluster co-firing (largest share on one token)",
        ANALYSIS,
        "ultra_low_cofire_max_share",
        "0.95",
        ">= 0.9",
        lambda v, r: v >= 0.9,
    ),
    Quantity(
        "cross-seed ultra-low direction cosine",
        COMPARE,
        _pair("ultra_low_direction_cos"),
        "0.96",
        "> 0.9",
        lambda v, r: v > 0.9,
    ),
    Quantity(
        "  the same with the mean activation direction removed",
        COMPARE,
        _pair("ultra_low_direction_cos_without_mean_activation"),
        "-",
        "> 0.9",
        lambda v, r: v > 0.9,
    ),
    Quantity(
        "  baseline: abs cos with the mean activation",
        COMPARE,
        "seed0_ultra_low_dir_cos_mean_activation",
        "not it",
        "< 0.5",
        lambda v, r: abs(v) < 0.5,
    ),
    Quantity(
        "  baseline: abs cos with b_dec",
        COMPARE,
        "seed0_ultra_low_dir_cos_b_dec",
        "-",
        "< 0.5",
        lambda v, r: abs(v) < 0.5,
    ),
    Quantity(
        "  baseline: max abs cos with top 5 PCs",
        COMPARE,
        "seed0_ultra_low_dir_max_abs_cos_top_pcs",
        "not it",
        "< 0.5",
        lambda v, r: v < 0.5,
    ),
    Quantity(
        "cross-seed matched > 0.9, ultra-low", COMPARE, _pair("share_matched_above_0.9_ultra_low"), "-", "-", None
    ),
    Quantity(
        "cross-seed matched > 0.9, non-ultra-low",
        COMPARE,
        _pair("share_matched_above_0.9_non_ultra_low"),
        "-",
        "-",
        None,
    ),
    Quantity(
        "encoder/decoder cosine, median (non-ultra-low)",
        ANALYSIS,
        "enc_dec_cos_median",
        "0.5",
        "0.3-0.7",
        lambda v, r: 0.3 <= v <= 0.7,
    ),
    Quantity(
        "neuron basis: share of dense decoder rows",
        ANALYSIS,
        "neuron_frac_dense",
        "0.921",
        "> 0.5",
        lambda v, r: v > 0.5,
    ),
    Quantity(
        "neuron kurtosis median (Gaussian baseline in criterion)",
        ANALYSIS,
        "kurtosis_median",
        "privileged",
        "> Gaussian median + 1",
        lambda v, r: _above(v, _m(r, ANALYSIS, "kurtosis_gaussian_median"), 1),
    ),
    Quantity(
        "W_out null-space share, encoder (random 1 - d_model/d_mlp)",
        ANALYSIS,
        "null_share_enc_mean",
        "baseline 0.75",
        "-",
        None,
    ),
    Quantity(
        "D/E projection median, non-ultra-low",
        ANALYSIS,
        "de_projection_median_non_ultra_low",
        "~1",
        "0.5-1.5",
        lambda v, r: 0.5 <= v <= 1.5,
    ),
    Quantity(
        "D/E projection median, ultra-low",
        ANALYSIS,
        "de_projection_median_ultra_low",
        "~0",
        "abs < 0.5",
        lambda v, r: abs(v) < 0.5,
    ),
    Quantity(
        "frequent-feature cosine variance (random 1/d_in in criterion)",
        ANALYSIS,
        "frequent_cos_var",
        "0.002 vs 0.0005",
        "> random",
        lambda v, r: _above(v, _m(r, ANALYSIS, "frequent_cos_baseline_var")),
    ),
    Quantity("top-10 ablation CE recovered", ANALYSIS, "topk_10_ce_recovered_zero", "-", "-", None),
]


def _flatten(params: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in params.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def regime_of(params: dict, defaults: dict) -> str | None:
    """The regime whose overrides are exactly where ``params`` differs from ``defaults`` (seeds ignored)."""
    p, d = _flatten(params), _flatten(defaults)
    diff = {k: v for k, v in p.items() if k != "seeds" and d.get(k) != v}
    for name, over in REGIMES.items():
        if diff == over:
            return name
    return None


def read_metrics(rev: str, root: Path = Path(".")) -> dict:
    """The metrics files of one run: from the workspace, or from the experiment's git commit.

    Only metrics/evaluate.json is a declared DVC metric (so `dvc exp show` stays readable); the
    others are committed outputs of every experiment commit, read with `git show`.
    """
    out = {}
    for f in FILES:
        if rev == "workspace":
            path = root / f
            text = path.read_text() if path.exists() else None
        else:
            res = subprocess.run(["git", "show", f"{rev}:{f}"], capture_output=True, text=True, cwd=root)
            text = res.stdout if res.returncode == 0 else None
        if text:
            out[f] = json.loads(text)
    return out


def gather(exp_show, defaults: dict, read=read_metrics) -> dict[str, dict]:
    """{regime: {"rev", "seeds", metrics file: metrics}} from ``dvc exp show --json --all-commits``.

    The default regime is the workspace (the committed run); every other regime is its newest
    finished experiment. A queued or running experiment (rev "workspace" under another name) is skipped.
    """
    best: dict[str, tuple] = {}
    for name, data in runs(exp_show):
        rev = str(data.get("rev", ""))
        try:
            params = data["params"]["params.yaml"]["data"]
        except (KeyError, TypeError):
            continue
        regime = regime_of(params, defaults)
        is_workspace = rev == "workspace" and name == "workspace"
        if regime is None or (regime == "default") != is_workspace or (rev == "workspace" and not is_workspace):
            continue
        stamp = str(data.get("timestamp") or "")
        if regime not in best or stamp > best[regime][0]:
            best[regime] = (stamp, rev, params)
    found = {}
    for regime, (_, rev, params) in best.items():
        metrics = read(rev)
        if metrics.get(EVAL):
            found[regime] = metrics | {"rev": rev, "seeds": params.get("seeds")}
    return found


def verdict(results: list[bool | None]) -> str:
    tested = [r for r in results if r is not None]
    if not tested:
        return "not measured"
    if len(tested) == 1:  # one regime cannot say whether a finding holds beyond it
        return "holds in the one regime measured" if tested[0] else "fails in the one regime measured"
    if all(tested):
        return "holds in every regime" if len(tested) == len(results) else "holds in every measured regime"
    return "does not replicate" if not any(tested) else "holds in some"


def table(found: dict[str, dict]) -> list[dict]:
    names = [r for r in REGIMES if r in found]
    rows = []
    for q in QUANTITIES:
        row = {"quantity": q.name, "reference": q.reference, "criterion": q.criterion}
        results = []
        for r in names:
            v = _m(found[r], q.file, q.key)
            row[r] = v
            ok = None if v is None or q.holds is None else q.holds(v, found[r])
            results.append(None if ok is None else bool(ok))
        if q.holds is None:
            row["verdict"] = "reported, no claim tested"
        else:
            held = [r for r, ok in zip(names, results) if ok]
            row["verdict"] = verdict(results) + (f" ({', '.join(held)})" if verdict(results) == "holds in some" else "")
        rows.append(row)
    return rows


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def write(rows: list[dict], found: dict[str, dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    names = [r for r in REGIMES if r in found]
    cols = ["quantity", "reference", *names, "criterion", "verdict"]
    with open(out / "regimes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    lines += [
        "",
        "Runs: "
        + "; ".join(
            f"{n}: seeds {found[n].get('seeds')}, L0 {_fmt(_m(found[n], EVAL, 'l0'))}, "
            f"{_fmt(_m(found[n], DETAIL, 'ce_eval_tokens'))} CE tokens, {_fmt(found[n].get('rev'))[:10]}"
            for n in names
        ),
    ]
    (out / "regimes.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("findings"))
    p.add_argument(
        "--json", type=Path, help="a saved runs.json (default: gather from `dvc exp show` and save it to OUT)"
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = p.parse_args(argv)
    if args.json:
        found = json.loads(args.json.read_text())
    else:
        cmd = ["dvc", "exp", "show", "--json", "--all-commits"]
        raw = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        found = gather(raw, yaml.safe_load(args.params.read_text()))
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "runs.json", found)
    if not found:
        raise SystemExit("no regime found in `dvc exp show`; run the experiments first (see --help)")
    write(table(found), found, args.out)
    print((args.out / "regimes.md").read_text())


if __name__ == "__main__":
    main()
