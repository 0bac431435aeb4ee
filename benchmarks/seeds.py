"""The frontier's goals across seeds: per-seed figures and the goals recomputed on seed means.

    python benchmarks/seeds.py    # reads the three committed runs below, writes benchmarks/results/frontier_seeds.md

Each input is one ``frontier.py`` run (``frontier.json``) with its own ``--seed``; a run may train a
subset of the families (``--only``). For every (trainer, family, setting) the table gives each
seed's L0 and MSE and their means over the seeds that trained it. The goals are then computed by
``frontier.goals`` (the same definitions as each run's own frontier.md) on those means: a family's
mean point is its setting's mean L0 and mean MSE. Only settings trained in two or more seeds
count, so goal 2's "best saelab recipe" is the best of those (the seed-0-only topk-anneal is not
among them). Each goal-1 pair (a SAELens family and its saelab counterpart) must have been trained
in the same seeds; the script refuses otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frontier import COUNTERPART, best_vs_standard_lines, goals, same_architecture_lines, verdict  # noqa: E402

RUNS = [HERE / "results" / d / "frontier.json" for d in ("frontier_cpu", "frontier_cpu_seed1", "frontier_cpu_seed2")]
METRICS = ("l0", "mse", "frac_dead", "frac_ultra_low", "ce_recovered_zero")


def seed_means(reports: list[dict]) -> list[dict]:
    """One row per (trainer, family, setting) trained in at least two of ``reports``: per-seed values and means."""
    by = {}
    for rep in reports:
        for r in rep["results"]:
            by.setdefault((r["trainer"], r["arch"], r["value"]), []).append((rep.get("seed", 0), r))
    rows = []
    for (trainer, arch, value), runs in by.items():
        if len(runs) < 2:
            continue
        rows.append(
            {
                "trainer": trainer,
                "arch": arch,
                "value": value,
                "knob": runs[0][1]["knob"],
                "seeds": [s for s, _ in runs],
                "per_seed": {m: [r[m] for _, r in runs] for m in METRICS},
                **{m: statistics.mean(r[m] for _, r in runs) for m in METRICS},
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, default=RUNS, help="frontier.json files, one per seed")
    p.add_argument("--out", type=Path, default=HERE / "results" / "frontier_seeds.md")
    args = p.parse_args()
    reports = [json.loads(f.read_text()) for f in args.runs]
    seeds = [rep.get("seed", 0) for rep in reports]
    if len(set(seeds)) != len(seeds):
        sys.exit(f"seeds {seeds}: each input must be a different seed")
    rows = seed_means(reports)
    seeds_of = {}
    for r in rows:
        seeds_of.setdefault((r["trainer"], r["arch"]), set()).update(r["seeds"])
    for (trainer, arch), theirs in seeds_of.items():
        for c in COUNTERPART.get(arch, ()) if trainer == "sae-lens" else ():
            if ("saelab", c) in seeds_of and seeds_of[("saelab", c)] != theirs:
                sys.exit(
                    f"SAELens {arch} (seeds {sorted(theirs)}) and saelab {c} (seeds {sorted(seeds_of[('saelab', c)])}) "
                    "were trained in different seeds: run both with the same --seed values"
                )
    g = goals(rows)
    lines = [
        f"Frontier goals across seeds {', '.join(map(str, seeds))} (inputs: "
        + ", ".join(f"`{f.relative_to(HERE.parent) if f.is_absolute() else f}`" for f in args.runs)
        + "). Regenerate: `python benchmarks/seeds.py`.",
        "",
        "| trainer | family | setting | seeds | L0 per seed | MSE per seed | mean L0 | mean MSE | mean dead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["arch"], r["trainer"], r["value"])):
        lines.append(
            f"| {r['trainer']} | {r['arch']} | {r['knob']} {r['value']} | {', '.join(map(str, r['seeds']))} | "
            + " / ".join(f"{v:.2f}" for v in r["per_seed"]["l0"])
            + " | "
            + " / ".join(f"{v:.2f}" for v in r["per_seed"]["mse"])
            + f" | {r['l0']:.2f} | {r['mse']:.3f} | {100 * r['frac_dead']:.1f}% |"
        )
    lines += [
        "",
        "Goal 1 on seed means (saelab MSE / SAELens MSE at SAELens's mean L0, linear in log L0; target <= 1.02):",
        "",
    ]
    lines += same_architecture_lines(g, mse=".3f")
    lines += ["", "Goal 1 per seed (from each run's own goals):", ""]
    for rep, seed in zip(reports, seeds):
        lines += [
            f"- seed {seed}, SAELens {x['saelens']} vs saelab {x['saelab']} at L0 {x['l0']:.1f}: {x['ratio']:.3f} "
            f"({verdict(x)})"
            for x in rep["goals"]["same_architecture"]
            if x["ratio"] is not None
        ]
    lines += ["", "Goal 2 on seed means (best saelab family vs SAELens standard at equal L0, target >= 20%):", ""]
    lines += best_vs_standard_lines(g)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
