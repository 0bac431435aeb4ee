"""Transcoders beside SAEs at the same target: per block, the SAE trained on hook_mlp_out and the transcoder
ln2.hook_normalized -> hook_mlp_out, same recipe, both evaluated against hook_mlp_out with their output spliced
there, from a workspace where they ran (activations.extra_hooks holding the targets, activations.transcoders the
pairs).

python benchmarks/transcoders.py --workspace <ws> --out benchmarks/results/transcoders_cpu [--command "..."]

Reads metrics/sites/<target>/evaluate*.json (evaluate_site), metrics/transcoders/<target>/evaluate*.json
(evaluate_transcoder), metrics/lm.json and params.yaml of the workspace, and copies them next to the table, so
every number in transcoders.md is in a committed file. Definitions: docs/metrics.md, "Transcoders".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402

COLUMNS = ("ce_recovered_zero", "explained_variance", "mse", "l0", "frac_dead", "l2_ratio")


def row(kind: str, target: str, m: dict, d: dict) -> str:
    ce = f"{d['ce_sae'] - d['ce_clean']:+.4f}"
    cells = [f"{m[k]:.4f}" if k != "l0" else f"{m[k]:.1f}" for k in COLUMNS]
    return f"| {target.removeprefix('blocks.').split('.')[0]} | {kind} | {ce} | " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/transcoders_cpu"))
    p.add_argument("--command", default="", help="the command that produced the workspace's outputs")
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    ws, out = args.workspace, args.out
    params = yaml.safe_load((ws / "params.yaml").read_text())
    pairs = params["activations"]["transcoders"]
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Transcoders beside SAEs at the MLP's output",
        "",
        f"Hardware: {cpu_model()}. Command: `{args.command}`, then `python benchmarks/transcoders.py --workspace "
        f'<that workspace> --out {out}`. Definitions: docs/metrics.md, "Transcoders". The stage outputs are copied '
        "here (`sae-<target>-evaluate*.json`, `transcoder-<target>-evaluate*.json`, `lm.json`, `params.json`).",
        "",
    ]
    lm = json.loads((ws / "metrics/lm.json").read_text())
    shutil.copy(ws / "metrics/lm.json", out / "lm.json")
    sae = params["sae"]
    used = {k: params[k] for k in ("lm", "activations", "sae", "evaluate", "seeds")}
    (out / "params.json").write_text(json.dumps(used, indent=1) + "\n")
    lines += [
        f"LM: embedded, {params['lm']['n_layers']} layers, d_model {params['lm']['d_model']}, eval CE "
        f"{lm['eval_ce']:.4f}. Both kinds: {sae['architecture']}"
        + (f" k {sae['topk']['k']}" if sae["architecture"] == "topk" else "")
        + f", expansion {sae['expansion']}, {sae['n_tokens']:,} training tokens, seed {params['seeds'][0]}; "
        "the SAE reads and reconstructs hook_mlp_out, the transcoder reads ln2.hook_normalized and reconstructs "
        "hook_mlp_out. Every column is measured against hook_mlp_out; CE + is CE spliced - CE clean (nats/token).",
        "",
        "| block | kind | CE + | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 3) + "|",
    ]
    for target in pairs:
        for kind, folder in (
            ("SAE", ws / "metrics/sites" / target),
            ("transcoder", ws / "metrics/transcoders" / target),
        ):
            m, d = (json.loads((folder / f"{name}.json").read_text()) for name in ("evaluate", "evaluate_detail"))
            for name in ("evaluate", "evaluate_detail"):
                shutil.copy(folder / f"{name}.json", out / f"{kind.lower()}-{target}-{name}.json")
            lines.append(row(kind, target, m, d))
    (out / "transcoders.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
