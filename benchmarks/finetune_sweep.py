"""KL fine-tunes of the default run's SAE over KL's share of the loss, the share of tokens and the lr.

Each setting runs the `finetune` stage itself (stages/finetune.py, the same code as `dvc repro finetune`) with
params.yaml's `finetune` section overridden, on the pipeline's outputs (run `dvc repro train@0` first), and reads
its metrics/finetune.json: the CE gap before and after (docs/metrics.md, "Functional training"), the L0 ratio and
the activation MSE. Writes sweep.json and sweep.md under --out. The issue's goal: CE gap -50% at L0 within ±5% on
<= 10% of the tokens.

    python benchmarks/finetune_sweep.py --out benchmarks/results/finetune_sweep_cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from reader import cpu_model  # noqa: E402

from saelab import threads

# (kl_share, frac_tokens, lr): the stage's default first, then the knobs one at a time and together
GRID = [
    (0.5, 0.05, 3e-4),
    (0.5, 0.10, 3e-4),
    (0.75, 0.10, 3e-4),
    (0.9, 0.10, 3e-4),
    (1.0, 0.10, 3e-4),
    (0.75, 0.10, 1e-3),
    (0.9, 0.10, 1e-3),
    (1.0, 0.10, 1e-3),
]
KEYS = ("ce_gap_source", "ce_gap_finetuned", "ce_gap_reduction", "source_l0", "finetuned_l0", "l0_ratio",
        "source_mse", "finetuned_mse", "source_frac_dead", "finetuned_frac_dead", "kl_coeff", "mse_coeff",
        "finetune_tokens", "finetune_share_of_train_tokens")  # fmt: skip


def run_one(args, share: float, frac: float, lr: float) -> dict:
    name = f"share{share}-frac{frac}-lr{lr:g}"
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(Path(args.params).read_text())
    params["finetune"].update({"kl_share": share, "frac_tokens": frac, "lr": lr, "mse_coeff": "balanced"})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "-m", "stages.finetune", "--params", str(work / "params.yaml"), "--sae", args.sae,
           "--lm", "models/lm", "--tokens", "data/tokens", "--activations", "data/activations",
           "--out", str(work / "sae"), "--live", str(work / "live"), "--metrics", str(work / "finetune.json"),
           "--timing", str(work / "timing.json"), "--checkpoints", str(work / "ckpt")]  # fmt: skip
    subprocess.run(cmd, check=True)
    m = json.loads((work / "finetune.json").read_text())
    t = json.loads((work / "timing.json").read_text())
    row = {"kl_share": share, "frac_tokens": frac, "lr": lr, **{k: m[k] for k in KEYS}}
    row["finetune_seconds"] = t["finetune_seconds"]
    row["met"] = m["ce_gap_reduction"] >= 0.5 and abs(m["l0_ratio"] - 1) <= 0.05 and frac <= 0.1
    print(
        f"{name}: gap {m['ce_gap_source']:.4f} -> {m['ce_gap_finetuned']:.4f} ({100 * m['ce_gap_reduction']:.1f}%)"
        f", L0 ratio {m['l0_ratio']:.3f}, MSE {m['source_mse']:.2f} -> {m['finetuned_mse']:.2f}",
        flush=True,
    )
    return row


def write(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "hardware": f"{cpu_model()}, {platform.machine()}",
        "command": "python benchmarks/finetune_sweep.py " + " ".join(sys.argv[1:]),
        "source_sae": args.sae,
        "rows": rows,
    }
    (args.out / "sweep.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"Hardware: {report['hardware']}. Source: the default run's SAE {args.sae}; every fine-tune is "
        "the `finetune` stage with `mse_coeff: balanced` (KL x kl_share MSE0/KL0 + MSE x (1 - kl_share)), "
        "the rest of params.yaml as committed; one SAE. CE gap = ce_sae - ce_clean (nats/token) on evaluate's "
        f"CE tokens. Regenerate: `{report['command']}`.",
        "",
        "| kl_share | frac_tokens | lr | CE gap before | after | reduction | L0 before | L0 ratio | MSE before "
        "| after | KL weight | MSE weight | seconds | goal (-50% at L0 ±5%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kl_share']} | {r['frac_tokens']} | {r['lr']:g} | {r['ce_gap_source']:.4f} | "
            f"{r['ce_gap_finetuned']:.4f} | {100 * r['ce_gap_reduction']:.1f}% | {r['source_l0']:.2f} | "
            f"{r['l0_ratio']:.3f} | {r['source_mse']:.2f} | {r['finetuned_mse']:.2f} | {r['kl_coeff']:.4g} | "
            f"{r['mse_coeff']:.3g} | {r['finetune_seconds']:.0f} | {'met' if r['met'] else 'missed'} |"
        )
    (args.out / "sweep.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--sae", default="models/saes/seed-0")
    p.add_argument("--work", type=Path, default=Path("/tmp/finetune-sweep"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune_sweep_cpu"))
    p.add_argument("--settings", type=int, nargs="+", choices=range(len(GRID)), help="indices into GRID (default: all)")
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    rows = [run_one(args, *GRID[i]) for i in (range(len(GRID)) if args.settings is None else args.settings)]
    write(rows, args)
    print((args.out / "sweep.md").read_text())


if __name__ == "__main__":
    main()
