"""Tables of a many-site run: per-site trends, the cost of splicing every SAE at once, bad tokens across sites
and error propagation, from a workspace where ``dvc exp run`` (or ``dvc repro``) ran with activations.extra_hooks.

python benchmarks/layers.py --workspace . --out benchmarks/results/layers_cpu [--command "dvc exp run ..."]

Reads metrics/splice/seed-N.json (stage splice), metrics/lm.json, timings/ and params.yaml of the workspace;
copies the splice metrics next to the tables, so every number in layers.md is in a committed file.
Definitions: docs/metrics.md, "Splicing every site".
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


def fmt(v, spec: str = ".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def short(hook: str) -> str:
    return hook.removeprefix("blocks.").replace(".hook_", " ").replace(".mlp", " mlp")


def share(curve: dict | None, ce: float) -> str:
    """The compute equivalent of a spliced CE: the share of the LM's training at which it had that CE."""
    from saelab.eval.metrics import training_share

    if curve is None:
        return "n/a"
    _, tokens, losses = zip(*curve["curve"])
    return fmt(training_share(ce, tokens, losses), ".1%")


def tables(runs: dict[int, dict], curve: dict | None = None) -> list[str]:
    lines = []
    for seed, m in runs.items():
        sites = m["sites"]
        a = m["all"]
        clean = a["ce"] - a["ce_increase"]
        lines += [
            f"### Seed {seed}",
            "",
            f"CE clean {clean:.4f} nats/token on {m['ce_eval_tokens']:,} predicted tokens. "
            f"All {len(sites)} SAEs at once: CE {a['ce']:.4f} (+{a['ce_increase']:.4f}), CE recovered "
            f"{fmt(a['ce_recovered_zero'])} (against zero-ablating every site); the increases alone sum to "
            f"{a['sum_of_alone_increases']:.4f}, so additivity = {fmt(a['additivity'], '.3f')} (1 additive, > 1 "
            "super-additive).",
            "",
        ]
        if curve is not None:
            last = curve["curve"][-1][2]
            lines += [f"Compute equivalent (docs/metrics.md): the plain LM had the all-spliced CE after "
                      f"{share(curve, a['ce'])} of its training tokens (its curve's last point, {last:.4f}, "
                      f"is this clean CE on the same tokens: `lm_curve.json`).", ""]  # fmt: skip
        lines += [
            "| site | CE +alone | CE recovered alone | compute equivalent alone | CE +without it | marginal | EV "
            "| relative error | L2 ratio | mean norm | L0 | dead | corr(d, d_all) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in sites:
            r = m["per_site"][h]
            lines.append(
                f"| {short(h)} | {r['ce_increase_alone']:.4f} | {r['ce_recovered_zero_alone']:.4f} | "
                f"{share(curve, clean + r['ce_increase_alone'])} | "
                f"{fmt(r.get('ce_increase_without'), '.4f')} | {fmt(r.get('marginal_ce_increase'), '.4f')} | "
                f"{r['explained_variance']:.4f} | {fmt(r['relative_error'], '.4f')} | {r['l2_ratio']:.4f} | "
                f"{r['mean_norm']:.3g} | {r['l0']:.1f} | {r['frac_dead']:.4f} | "
                f"{fmt(r['ce_diff_corr_with_all'], '.3f')} |"
            )
        lines += ["", "Correlation of per-token CE differences (alone) between sites; in brackets the Jaccard overlap "
                  f"of their worst {100 * m['worst_token_overlap']['share']:.0f}% tokens:", ""]  # fmt: skip
        lines += ["| | " + " | ".join(short(h) for h in sites) + " |", "|---" * (len(sites) + 1) + "|"]
        for x in sites:
            cells = [f"{fmt(m['ce_diff_corr'][x][y], '.3f')} ({m['worst_token_overlap']['jaccard'][x][y]:.2f})"
                     for y in sites]  # fmt: skip
            lines.append(f"| {short(x)} | " + " | ".join(cells) + " |")
        lines += ["", "Propagation: relative error at each later site caused by one SAE spliced alone (its own "
                  "SAE's relative error on clean inputs in the last column):", ""]  # fmt: skip
        lines += ["| from \\ at | " + " | ".join(short(h) for h in sites) + " |", "|---" * (len(sites) + 1) + "|"]
        for x in sites:
            prop = m["per_site"][x]["propagated_relative_error"]
            lines.append(f"| {short(x)} | " + " | ".join(fmt(prop.get(y), ".4f") if y in prop else "" for y in sites)
                         + " |")  # fmt: skip
        lines.append("| own SAE | " + " | ".join(fmt(m["per_site"][y]["relative_error"], ".4f") for y in sites) + " |")
        lines.append("")
    return lines


def cross_seed(ws: Path, seeds: list[int], sites: list[str]) -> list[str]:
    """Reference for the bad-token overlap: the same site's SAEs of two seeds (same LM, cache and CE rows)."""
    import numpy as np
    import pyarrow.parquet as pq

    from saelab.eval.sites import worst_overlap

    if len(seeds) < 2:
        return []
    t = [pq.read_table(ws / f"data/splice/seed-{s}/per_token.parquet").to_pydict() for s in seeds[:2]]
    keep = np.asarray(t[0]["covered"], dtype=bool)
    lines = [f"Reference: the same site's SAEs of seeds {seeds[0]} and {seeds[1]} (same LM, cache and tokens), "
             "correlation of their per-token CE differences and Jaccard overlap of their worst 1% tokens:",
             ""]  # fmt: skip
    lines += ["| site | correlation | Jaccard |", "|---|---|---|"]
    for h in sites:
        d = [np.asarray(x[f"ce:alone:{h}"]) - np.asarray(x["ce:clean"]) for x in t]
        r = float(np.corrcoef(d[0][keep], d[1][keep])[0, 1])
        lines.append(f"| {short(h)} | {r:.3f} | {fmt(worst_overlap(d[0][keep], d[1][keep], 0.01), '.3f')} |")
    return lines + [""]


def talk(ws: Path, seeds: list[int]) -> list[str]:
    lines = []
    for s in seeds:
        path = ws / f"data/splice/seed-{s}/generations.json"
        if not path.exists():
            continue
        g = json.loads(path.read_text())
        sm = g["summary"]
        lines += [f"Seed {s}, talking to the patched model ({sm['n_prompts']} prompts of {sm['prompt_tokens']} tokens, "
                  f"{sm['new_tokens']} new): greedy continuations part from the clean model's in "
                  f"{fmt(sm['greedy_diverged_share'], '.0%')} of prompts (median first divergence "
                  f"{fmt(sm['greedy_first_divergence_median'], '.1f')}), sampled ones in "
                  f"{fmt(sm['sampled_diverged_share'], '.0%')} (median "
                  f"{fmt(sm['sampled_first_divergence_median'], '.1f')}). "
                  "First two prompts, greedy (agreed part, then clean | spliced):", ""]  # fmt: skip
        for rec in g["prompts"][:2]:
            gr = rec["greedy"]
            clean, spliced = (gr[k][len(gr["agreed"]) :] for k in ("clean", "spliced"))
            lines.append(f"- `{rec['prompt']!r}` -> `{gr['agreed']!r}` then `{clean!r}` | `{spliced!r}`")
        lines.append("")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, default=Path("."))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/layers_cpu"))
    p.add_argument("--command", default="", help="the command that produced the workspace's outputs")
    p.add_argument("--curve", type=Path, help="benchmarks/lm_curve.py's output for this workspace's LM")
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    ws = args.workspace
    curve = json.loads(args.curve.read_text()) if args.curve else None
    if curve is not None:  # the curve must be this workspace's LM, measured on the splice's CE tokens
        from saelab.io import sha256_dir

        seed = yaml.safe_load((ws / "params.yaml").read_text())["seeds"][0]
        first = json.loads((ws / f"metrics/splice/seed-{seed}.json").read_text())["all"]
        ce_clean = first["ce"] - first["ce_increase"]
        if not curve["same_weights"] or curve["lm_sha256"] != sha256_dir(ws / "models/lm"):
            raise SystemExit(f"{args.curve}: not the curve of {ws / 'models/lm'} (retrain it with lm_curve.py)")
        if abs(curve["curve"][-1][2] - ce_clean) > 1e-6:
            raise SystemExit(
                f"{args.curve}: its last CE {curve['curve'][-1][2]} is not the splice's clean CE {ce_clean}"
            )
    params = yaml.safe_load((ws / "params.yaml").read_text())
    runs = {s: json.loads((ws / f"metrics/splice/seed-{s}.json").read_text()) for s in params["seeds"]}
    args.out.mkdir(parents=True, exist_ok=True)
    for s in params["seeds"]:
        shutil.copy(ws / f"metrics/splice/seed-{s}.json", args.out / f"splice-seed-{s}.json")
    lm = json.loads((ws / "metrics/lm.json").read_text())
    shutil.copy(ws / "metrics/lm.json", args.out / "lm.json")
    timing = {}
    for name in ("lm", "activations"):
        path = ws / f"timings/{name}.json"
        if path.exists():
            timing[name] = json.loads(path.read_text())
    (args.out / "timings.json").write_text(json.dumps(timing, indent=1) + "\n")
    # the workspace's lock (every input's and output's hash) and the evaluations beside the splice
    shutil.copy(ws / "dvc.lock", args.out / "workspace-dvc.lock")
    shutil.copy(ws / "metrics/evaluate_detail.json", args.out / "evaluate_detail-root-site.json")
    for path in sorted((ws / "metrics/sites").glob("*/evaluate*.json")):
        shutil.copy(path, args.out / f"sites-{path.parent.name}-{path.name}")
    for s in params["seeds"]:
        if (ws / f"data/splice/seed-{s}/generations.json").exists():
            shutil.copy(ws / f"data/splice/seed-{s}/generations.json", args.out / f"generations-seed-{s}.json")
    used = {k: params[k] for k in ("lm", "activations", "sae", "evaluate", "seeds")}
    (args.out / "params.json").write_text(json.dumps(used, indent=1) + "\n")
    sae = params["sae"]
    lines = [
        "# Every layer: one seed's SAEs at every site spliced alone and together",
        "",
        f"Hardware: {cpu_model()}. Command: `{args.command}`, then `python benchmarks/layers.py "
        f'--workspace <that workspace> --out {args.out}`. Definitions: docs/metrics.md, "Splicing every site". '
        f"The run's params are in `params.json`, the stage outputs copied here as `splice-seed-N.json` and "
        "`lm.json`.",
        "",
        f"LM: embedded, {params['lm']['n_layers']} layers, d_model {params['lm']['d_model']}, d_mlp "
        f"{params['lm']['d_mlp']}, vocab {params['lm']['vocab_size']}, {params['lm']['n_steps']} steps; eval CE "
        f"{fmt(lm.get('eval_ce'), '.4f')}. SAEs: {sae['architecture']}, expansion {sae['expansion']}, "
        f"{sae['n_tokens']:,} training tokens each"
        + (f", k {sae['topk']['k']}" if sae["architecture"] == "topk" else "")
        + ".",
        "",
        *tables(runs, curve),
        *cross_seed(ws, params["seeds"], runs[params["seeds"][0]]["sites"]),
        *talk(ws, params["seeds"]),
    ]
    (args.out / "layers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
