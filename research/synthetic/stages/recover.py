"""Synthetic stage recover: score every trained SAE against its world's true features.

    python -m research.synthetic.stages.recover --models models --data data --out results --metrics metrics.json

Writes ``results/recovery.json`` (every run's metrics), ``results/recovery.csv``,
``results/recovery.md`` (tables, matched-L0 MCC per architecture, the compositional verdicts) and
figures; ``metrics.json`` (flat, for `dvc metrics show`). Definitions: docs/synthetic.md.
"""

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from research.frontier import knob  # noqa: E402
from research.synthetic.recovery import matched_l0, score  # noqa: E402
from research.synthetic.worlds import load_synth_params, load_world  # noqa: E402
from saelab.io import atomic_dir, write_json  # noqa: E402
from saelab.saes.base import SAE  # noqa: E402
from saelab.stage import log, parser, run_stage  # noqa: E402

COLS = (
    "run",
    "world",
    "architecture",
    "knob",
    "value",
    "d_sae",
    "n_true",
    "l0",
    "true_l0",
    "mse",
    "explained_variance",
    "mcc",
    "mcc_chance",
    "recovered_0.9",
    "recovered_0.7",
    "n_pairs",
    "precision",
    "recall",
    "shrinkage",
    "absorption",
    "absorption_control",
    "absorption_pairs",
    "task_n_latents",
    "task_n_eff_per_direction",
    "task_dir_align",
    "task_span_align",
    "task_sum_align",
    "task_verdict",
)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def write_tables(rows: list[dict], matched: list[dict], out: Path) -> None:
    with open(out / "recovery.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "Regenerate: `cd research/synthetic && dvc repro` (definitions: docs/synthetic.md).",
        "",
        "| " + " | ".join(COLS) + " |",
        "|---" * len(COLS) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLS) + " |" for r in rows]
    lines += [
        "",
        "MCC at the world's true L0 (interpolated in log L0 between the runs of one dictionary size that bracket it):",
        "",
        "| world | architecture | d_sae | true L0 | runs | MCC at true L0 | best MCC |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['world']} | {m['architecture']} | {m['d_sae']} | {m['true_l0']:.2f} | {m['n_runs']} | "
        f"{_fmt(m['mcc_at_true_l0']) or 'not bracketed'} | {m['best_mcc']:.4f} |"
        for m in matched
    ]
    plain = [r for r in rows if not r.get("task_verdict") and "recovered_0.9_by_decile" in r]
    for t in (0.9, 0.7):
        if plain:
            lines += [
                "",
                f"Share of true features recovered at cos >= {t} per firing-frequency decile (rarest first):",
                "",
                "| run | " + " | ".join(f"d{i + 1}" for i in range(10)) + " |",
                "|---" * 11 + "|",
            ]
            lines += [
                f"| {r['run']} | " + " | ".join(_fmt(v) for v in r[f"recovered_{t}_by_decile"]) + " |" for r in plain
            ]
    comp = [r for r in rows if r.get("task_verdict")]
    if comp:
        lines += [
            "",
            "Compositional tasks (per run: latents per task direction, alignment, verdict):",
            "",
            "| run | architecture | d_sae / F | competing features | n_eff / m "
            "| dir_align | span_align | sum_align | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['run']} | {r['architecture']} | {r['d_sae'] / r['n_true']:.2g} | {r['competing']} | "
            f"{_fmt(r['task_n_eff_per_direction'])} | {_fmt(r['task_dir_align'])} | {_fmt(r['task_span_align'])} | "
            f"{_fmt(r.get('task_sum_align'))} | {r['task_verdict']} |"
            for r in comp
        ]
    (out / "recovery.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], out: Path) -> None:
    for world in sorted({r["world"] for r in rows}):
        rs = [r for r in rows if r["world"] == world]
        if len({r["architecture"] for r in rs}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for arch in sorted({r["architecture"] for r in rs}):
            pts = sorted((r["l0"], r["mcc"]) for r in rs if r["architecture"] == arch)
            ax.plot(*zip(*pts), "o-", label=arch)
        ax.axvline(rs[0]["true_l0"], color="grey", ls=":", label="true L0")
        ax.set_xscale("log")
        ax.set_xlabel("SAE L0 (held-out sample)")
        ax.set_ylabel("MCC (Hungarian mean cos⁺)")
        ax.set_title(f"Recovery vs L0, world {world}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"mcc_vs_l0_{world}.png", dpi=110)
        plt.close(fig)
    comp = [r for r in rows if r.get("task_verdict")]
    if comp:  # top: dictionary growth within each world; bottom: competing tasks at a fixed dictionary
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        keys = (
            ("task_dir_align", "task latents' best single-direction cos⁺"),
            ("task_n_eff_per_direction", "effective latents per task direction"),
        )
        growth = [r for r in comp if not r["world"].startswith("tasks-")]
        tasks = [r for r in comp if r["world"].startswith("tasks-")]
        for col, (key_, label) in enumerate(keys):
            ax = axes[0, col]
            for world, arch in sorted({(r["world"], r["architecture"]) for r in growth}):
                pts = sorted(
                    (r["d_sae"] / r["n_true"], r[key_])
                    for r in growth
                    if (r["world"], r["architecture"]) == (world, arch) and r[key_] is not None
                )
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{world}, {arch}")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="dictionary size / true feature count", ylabel=label)
            ax.legend(fontsize=6)
            ax = axes[1, col]
            for arch, knob_, value in sorted({(r["architecture"], r["knob"], r["value"]) for r in tasks}):
                pts = sorted(
                    (r["n_tasks"], r[key_])
                    for r in tasks
                    if (r["architecture"], r["knob"], r["value"]) == (arch, knob_, value) and r[key_] is not None
                )
                if pts:
                    ax.plot(*zip(*pts), "o-", label=f"{arch} {knob_} {value:g}")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="compositional tasks in the world (fixed d_sae)", ylabel=label)
            if tasks:
                ax.legend(fontsize=7)
        fig.suptitle("Compositional tasks: directions or combinations?")
        fig.tight_layout()
        fig.savefig(out / "compositional.png", dpi=110)
        plt.close(fig)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args = p.parse_args()
    with run_stage("synth-recover", args, load_synth_params) as params:
        samples, rows = {}, []
        for name, run in params.runs.items():
            if run.world not in samples:
                world, info = load_world(args.data / run.world)
                samples[run.world] = (world, *world.eval_sample())
            world, x, c = samples[run.world]
            sae, meta = SAE.load(args.models / name)
            arch, knob_name, value = knob(meta["train_params"])
            m = score(sae, world, x, c, params.recover)
            rows.append(
                {
                    "run": name,
                    "world": run.world,
                    "architecture": arch,
                    "knob": knob_name,
                    "value": value,
                    "competing": world.cfg.n_features,
                    "n_tasks": world.cfg.n_tasks,
                    **m,
                }
            )
            log.info("%s: L0 %.2f, MCC %.4f, recovered@0.9 %.3f", name, m["l0"], m["mcc"], m["recovered_0.9"])
        matched = matched_l0(rows)
        with atomic_dir(args.out) as tmp:
            write_json(tmp / "recovery.json", {"runs": rows, "matched_l0": matched})
            write_tables(rows, matched, tmp)
            plot(rows, tmp)
        flat = {f"{r['run']}.{k}": r[k] for r in rows for k in ("mcc", "l0", "recovered_0.9")}
        flat |= {
            f"{m['world']}.{m['architecture']}.d{m['d_sae']}.mcc_at_true_l0": m["mcc_at_true_l0"]
            for m in matched
            if m["mcc_at_true_l0"] is not None
        }
        write_json(args.metrics, flat)


if __name__ == "__main__":
    main()
