"""The L0 frontier of every architecture, saelab's and SAELens's, trained on the same cached tokens.

    make frontier           # creates .venv-saelens and runs this with the CPU budget below
    python benchmarks/frontier.py --saelens-python .venv-saelens/bin/python \
        [--n-tokens 307200] [--d-sae 2048] [--batch-size 2048] [--lr 3e-3] [--ce-tokens 32768] \
        [--out benchmarks/results/frontier_cpu]
    python benchmarks/frontier.py --grid anneal --out benchmarks/results/k_anneal_cpu   # k annealing at small k
    # GPU budget (if you have one): --n-tokens 1900000 --d-sae 16384 --batch-size 4096 --ce-tokens 131072
    # (the training tokens are held in memory, so the budget is the cache: cache more with activations.n_tokens)

Every trainer reads the same first ``--n-tokens`` of the activation cache in the same order
(benchmarks/harness.py), with the same width, batch, Adam betas and constant lr; everything
else is each recipe's own (SAELens: decoder init norm 0.1, gradient clipping, its AuxK; saelab:
params.yaml's defaults of each architecture). Sparsity settings per architecture: ``GRID``.

Each trained SAE is then scored by saelab's evaluate code (src/saelab/eval/evaluate.py; definitions
in docs/metrics.md) on held-out tokens: the seeded eval sample of the eval split, which no
trainer saw; CE loss recovered on its first ``--ce-tokens`` tokens. SAELens's SAEs are scored
through the same saelab classes, built from SAELens's inference weights (TopK with its k;
BatchTopK and JumpReLU as JumpReLU with SAELens's ``threshold``).

Output: ``frontier.json`` (every run: settings, tokens/s, metrics), ``frontier.md`` (table and
goals), ``frontier_mse.png`` and ``frontier_ce.png`` (L0 vs MSE and vs CE loss recovered).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import saelab.saes  # noqa: F401  (registers the built-in architectures: their knobs)
from research import interpolate
from saelab import registry, threads

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import TimedBatches, finish, worker_env  # noqa: E402
from reader import cpu_model  # noqa: E402


# (trainer, family) -> (architecture, sparsity knob, its values, fixed settings). SAELens's "standard" is
# the April 2024 recipe (L1 x decoder norm), so saelab's standard_april is its counterpart. JumpReLU
# runs in both penalty forms, in both tools: "tanh" (Anthropic, January 2025) and "step" (the paper's L0).
def _family(arch: str, values: list, fixed: dict) -> tuple:
    """A grid entry: (architecture, its sparsity knob from its class, the knob's values, fixed settings)."""
    return (arch, registry.knob(arch)[1], values, fixed)


JUMPRELU = {"bandwidth": 0.05, "threshold_init": 0.01}  # both tools alike (SAELens's defaults)
GRID = {
    ("saelab", "standard"): _family("standard", [0.5, 1.0, 2.0], {}),
    ("saelab", "standard_april"): _family("standard_april", [1.0, 2.0, 4.0], {}),
    ("saelab", "topk"): _family("topk", [4, 8, 16, 32, 64, 128], {}),
    ("saelab", "topk-unit"): _family("topk", [16, 32, 64], {"decoder": "unit", "aux_coeff": 1 / 32}),
    ("saelab", "topk-anneal"): _family("topk", [4, 8, 16], {"k_anneal_start": 128, "k_anneal_frac": 0.8}),
    ("saelab", "batchtopk"): _family("batchtopk", [16, 32, 64], {}),
    ("saelab", "jumprelu"): _family("jumprelu", [0.1, 0.3, 1.0], {**JUMPRELU, "sparsity": "tanh"}),
    ("saelab", "jumprelu-step"): _family("jumprelu", [0.3, 1.0, 3.0], {**JUMPRELU, "sparsity": "step"}),
    ("saelab", "jumprelu-step-b0"): _family(
        "jumprelu",
        [0.3, 1.0, 3.0],
        {**JUMPRELU, "sparsity": "step", "b_dec_init": "zero"},
    ),
    ("sae-lens", "standard"): _family("standard", [0.5, 1.0, 2.0], {}),
    ("sae-lens", "topk"): _family("topk", [16, 32, 64], {}),
    ("sae-lens", "batchtopk"): _family("batchtopk", [16, 32, 64], {}),
    ("sae-lens", "jumprelu"): _family("jumprelu", [0.1, 0.3, 1.0], {**JUMPRELU, "sparsity": "tanh"}),
    ("sae-lens", "jumprelu-step"): _family("jumprelu", [0.3, 1.0, 3.0], {**JUMPRELU, "sparsity": "step"}),
}


def _anneal(start: int, frac: float) -> dict:
    return {"k_anneal_start": start, "k_anneal_frac": frac}


# `--grid anneal`: what k annealing buys at small k (dead share vs MSE), and AuxK's weight, width and window,
# gradient clipping and resampling beside it, saelab's TopK only; results in benchmarks/results/k_anneal_cpu/
# (and, at 4x the budget, k_anneal_cpu_4x/, frontier_cpu_4x_unit_aux1/). The frontier's topk-anneal family is
# one of these recipes.
ANNEAL_GRID = {
    ("saelab", "topk"): _family("topk", [4, 8], {}),
    ("saelab", "topk-noaux"): _family("topk", [4, 8], {"aux_coeff": 0.0}),
    ("saelab", "topk-anneal64-0.8"): _family("topk", [4], _anneal(64, 0.8)),
    ("saelab", "topk-anneal128-0.5"): _family("topk", [4], _anneal(128, 0.5)),
    ("saelab", "topk-anneal128-0.8"): _family("topk", [4, 8], _anneal(128, 0.8)),
    ("saelab", "topk-anneal128-0.9"): _family("topk", [4], _anneal(128, 0.9)),
    ("saelab", "topk-anneal256-0.8"): _family("topk", [4], _anneal(256, 0.8)),
    ("saelab", "topk-anneal128-0.8-noaux"): _family("topk", [4, 8], {**_anneal(128, 0.8), "aux_coeff": 0.0}),
    ("saelab", "topk-noclip"): _family(
        "topk", [4, 8], {"grad_clip": 0.0}
    ),  # AuxK's gradient no longer shrinks the rest
    ("saelab", "topk-noclip-noaux"): _family("topk", [4, 8], {"grad_clip": 0.0, "aux_coeff": 0.0}),
    # k 4, from the best start above: a later end, a wider start, a stronger or earlier AuxK, no clipping
    ("saelab", "topk-anneal256-0.9"): _family("topk", [4], _anneal(256, 0.9)),
    ("saelab", "topk-anneal512-0.8"): _family("topk", [4], _anneal(512, 0.8)),
    ("saelab", "topk-anneal256-0.8-aux4"): _family("topk", [4], {**_anneal(256, 0.8), "aux_coeff": 4.0}),
    ("saelab", "topk-anneal256-0.8-dead10k"): _family("topk", [4], {**_anneal(256, 0.8), "dead_tokens": 10_240}),
    ("saelab", "topk-anneal256-0.8-noclip"): _family("topk", [4], {**_anneal(256, 0.8), "grad_clip": 0.0}),
    ("saelab", "topk-anneal256-0.8-noclip-aux4"): _family(
        "topk",
        [4],
        {**_anneal(256, 0.8), "grad_clip": 0.0, "aux_coeff": 4.0},
    ),
    # AuxK's width: k_aux latents share the residual, so the default d_in / 2 = 256 leaves each a small share at k 4
    ("saelab", "topk-kaux16"): _family("topk", [4], {"k_aux": 16}),
    ("saelab", "topk-anneal256-0.8-kaux16"): _family("topk", [4], {**_anneal(256, 0.8), "k_aux": 16}),
    ("saelab", "topk-anneal256-0.8-kaux64"): _family("topk", [4], {**_anneal(256, 0.8), "k_aux": 64}),
    ("saelab", "topk-anneal256-0.9-noaux"): _family("topk", [4], {**_anneal(256, 0.9), "aux_coeff": 0.0}),
    # Anthropic resampling beside AuxK, every dead window until 90% of training
    ("saelab", "topk-resample"): _family(
        "topk",
        [4, 8],
        {"resample": "anthropic", "resample_every": 51_200, "resample_window": 51_200, "resample_stop": 0.9},
    ),
    # the frontier's topk-unit with our AuxK weight (1, not 1/32): run at 4x the budget (docs/architectures.md)
    ("saelab", "topk-unit-aux1"): _family("topk", [16, 32], {"decoder": "unit", "aux_coeff": 1.0}),
}
# `--grid theta`: JumpReLU's θ held raw (clamped at 0, the default) or as log θ (`theta_param`), in the penalty
# forms whose L0 follows l0_coeff on this budget (tanh from b_dec at the mean, step from b_dec = 0); results in
# benchmarks/results/jumprelu_theta_cpu/ (docs/metrics.md, "The θ = 0 trap").
THETA_GRID = {
    ("saelab", f"jumprelu{form}{param}"): _family("jumprelu", values, {**fixed, **extra})
    for form, values, fixed in (
        ("", [0.1, 0.3, 1.0], {**JUMPRELU, "sparsity": "tanh"}),
        ("-step-b0", [0.3, 1.0, 3.0], {**JUMPRELU, "sparsity": "step", "b_dec_init": "zero"}),
    )
    for param, extra in (("", {}), ("-log", {"theta_param": "log"}))
}
GRIDS = {"frontier": GRID, "anneal": ANNEAL_GRID, "theta": THETA_GRID}

# SAELens family -> saelab families it is compared with at equal L0 (goal 1). JumpReLU step twice: our default
# start (b_dec at the data mean) and SAELens's trainer's start (b_dec = 0), since the start decides its L0.
COUNTERPART = {
    "standard": ("standard_april",),
    "topk": ("topk",),
    "batchtopk": ("batchtopk",),
    "jumprelu": ("jumprelu",),
    "jumprelu-step": ("jumprelu-step", "jumprelu-step-b0"),
}


# ---------------------------------------------------------------- saelab worker (own process)


def run_saelab(spec: dict) -> None:
    from saelab import registry
    from saelab.config import SAEConfig
    from saelab.registry import build
    from saelab.training.trainer import Trainer

    arch, value = spec["arch"], spec["value"]
    dead = {"dead_tokens": spec["dead_tokens"]}
    top = {k: v for k, v in spec["fixed"].items() if k in SAEConfig.model_fields}  # sae.* keys (resample, ...)
    fixed = {k: v for k, v in spec["fixed"].items() if k not in top}  # the architecture's section
    own = registry.get(arch).Params
    if own is not None and "dead_tokens" in own.model_fields:  # the AuxK window, alike in both tools
        fixed = {**dead, **fixed}
    cfg = SAEConfig(
        architecture=arch,
        d_sae=spec["d_sae"],
        lr=spec["lr"],
        beta1=spec["betas"][0],
        beta2=spec["betas"][1],
        batch_size=spec["batch_size"],
        n_tokens=spec["n_steps"] * spec["batch_size"],
        seed=spec["seed"],
        lr_warmup_tokens=0,
        lr_decay_frac=0.0,
        checkpoint_every=0,
        device=spec["device"],
        **top,
        **registry.knob_params(arch, value, fixed),
    )
    device = torch.device(spec["device"])
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    trainer = Trainer(build(cfg, spec["d_in"]).to(device), cfg, device)
    trainer.run(lambda skip: batches)
    finish(Path(spec["out"]), batches, {}, spec["device"], {"resample": trainer.resample_mode})
    trainer.sae.cpu().save(Path(spec["out"]) / "saelab", {"hook": spec["hook"]})


# ---------------------------------------------------------------- scoring (main process)


def load_trained(out: Path, trainer: str, value) -> torch.nn.Module:
    """The trained SAE as a saelab module: ours from its folder, SAELens's from its inference weights."""
    from safetensors.torch import load_file

    from saelab.saes.base import SAE
    from saelab.saes.jumprelu import JumpReLU
    from saelab.saes.topk import TopK

    if trainer == "saelab":
        return SAE.load(out / "saelab")[0]
    w = load_file(str(out / "sae.safetensors"))
    d_in, d_sae = w["W_enc"].shape
    inference = json.loads((out / "result.json").read_text())["inference_architecture"]
    if inference == "standard":
        sae = SAE(d_in, d_sae, seed=None)
    elif inference == "topk":
        sae = TopK(d_in, d_sae, seed=None, k=int(value))
    else:
        sae = JumpReLU(d_in, d_sae, seed=None)
    sae.load_state_dict({k: v.float() for k, v in w.items()})
    return sae


def theta_stats(sae) -> dict:
    """A JumpReLU's thresholds (after the fold): the share exactly at 0 (the θ = 0 trap) and the median."""
    if not hasattr(sae, "theta"):
        return {}
    theta = sae.theta().detach().float()
    return {"frac_theta_zero": float((theta == 0).float().mean()), "theta_median": float(theta.median())}


def score(sae, ctx: dict) -> dict:
    from saelab.eval.evaluate import evaluate

    metrics, _ = evaluate(
        ctx["model"],
        sae,
        ctx["rows"],
        ctx["hook"],
        ctx["mean"],
        ctx["ev"],
        torch.device("cpu"),
        ctx["exclude"],
        progress=False,
    )
    keys = (
        "mse",
        "explained_variance",
        "ce_recovered_zero",
        "ce_recovered_mean",
        "l0",
        "frac_dead",
        "frac_ultra_low",
        "frac_dense",
        "eval_tokens",
        "ce_eval_tokens",
    )
    return {**{k: metrics[k] for k in keys if k in metrics}, **theta_stats(sae)}


def eval_context(args) -> dict:
    from saelab.config import load_params
    from saelab.data.cache import ActivationCache
    from saelab.data.lm import excluded_token, load_lm
    from saelab.data.tokens import read_rows

    params = load_params(args.params)
    lm = load_lm(args.lm, torch.device("cpu"))
    cache = ActivationCache(args.cache)
    ev = params.evaluate.model_copy(update={"max_tokens": args.eval_tokens, "ce_max_tokens": args.ce_tokens})
    return {
        "model": lm.model,
        "tokenizer": lm.tokenizer,
        "rows": read_rows(args.tokens / "eval.parquet"),
        "hook": params.activations.hook,
        "mean": cache.mean,
        "ev": ev,
        "exclude": excluded_token(lm, params.activations.bos),
    }


# ---------------------------------------------------------------- comparisons


def at_l0(runs: list[dict], l0: float, key: str = "mse") -> float | None:
    """``key`` of a family of runs at ``l0`` (research.interpolate.at_l0: linear in log L0 between its points; None
    outside their range)."""
    return interpolate.at_l0([(r["l0"], r[key]) for r in runs], l0)


def goals(results: list[dict]) -> dict:
    """Each goal of issue 11 with the measured figure next to its target."""
    fam = {}
    for r in results:
        fam.setdefault((r["trainer"], r["arch"]), []).append(r)
    out = {"same_architecture": [], "best_vs_saelens_standard": [], "topk_dead": []}
    for (trainer, arch), runs in fam.items():
        if trainer != "sae-lens":
            continue
        for r in runs:
            for counterpart in (c for c in COUNTERPART[arch] if ("saelab", c) in fam):  # the families this run trained
                m = at_l0(fam[("saelab", counterpart)], r["l0"])
                out["same_architecture"].append(
                    {
                        "saelens": arch,
                        "saelab": counterpart,
                        "l0": r["l0"],
                        "saelens_mse": r["mse"],
                        "saelab_mse": m,
                        "ratio": m / r["mse"] if m is not None else None,
                        "target": "<= 1.02",
                        "met": (m / r["mse"] <= 1.02) if m is not None else None,
                    }
                )
            if arch == "standard":
                best = {a: at_l0(fam.get(("saelab", a), []), r["l0"]) for a in {a for t, a in fam if t == "saelab"}}
                best = {a: v for a, v in best.items() if v is not None}
                if best:
                    a = min(best, key=best.get)
                    out["best_vs_saelens_standard"].append(
                        {
                            "l0": r["l0"],
                            "saelens_mse": r["mse"],
                            "best_saelab": a,
                            "saelab_mse": best[a],
                            "reduction": 1 - best[a] / r["mse"],
                            "target": ">= 0.20",
                            "met": 1 - best[a] / r["mse"] >= 0.20,
                        }
                    )
    for (trainer, arch), runs in fam.items():
        if trainer == "saelab" and arch.startswith(("topk", "batchtopk")):  # arch: the family; every TopK recipe
            for r in runs:
                out["topk_dead"].append(
                    {
                        "arch": arch,
                        "value": r["value"],
                        "frac_dead": r["frac_dead"],
                        "frac_ultra_low": r["frac_ultra_low"],
                        "target": "dead < 0.05, ultra-low < 0.10",
                        "met": r["frac_dead"] < 0.05 and r["frac_ultra_low"] < 0.10,
                    }
                )
    return out


def verdict(x: dict) -> str:
    return "met" if x["met"] else "missed"


def same_architecture_lines(g: dict, mse: str = ".2f") -> list[str]:
    """Goal 1's lines of ``goals()``' output (``mse``: the MSEs' format)."""
    return [
        f"- SAELens {x['saelens']} vs saelab {x['saelab']} at L0 {x['l0']:.1f}: "
        + (
            f"{x['saelab_mse']:{mse}} / {x['saelens_mse']:{mse}} = {x['ratio']:.3f} ({verdict(x)})"
            if x["ratio"] is not None
            else "outside saelab's L0 range"
        )
        for x in g["same_architecture"]
    ]


def best_vs_standard_lines(g: dict) -> list[str]:
    """Goal 2's lines of ``goals()``' output."""
    return [
        f"- L0 {x['l0']:.1f}: saelab {x['best_saelab']} {x['saelab_mse']:.2f} vs {x['saelens_mse']:.2f}: "
        f"{100 * x['reduction']:.1f}% ({verdict(x)})"
        for x in g["best_vs_saelens_standard"]
    ]


def theta_lines(res: list[dict]) -> list[str]:
    """log θ vs raw θ at equal L0: each raw run's MSE and CE recovered against the log family's, interpolated in log
    L0 (``at_l0``), for every family ``F`` run beside ``F-log`` (``--grid theta``)."""
    fam = {}
    for r in res:
        fam.setdefault(r["arch"], []).append(r)
    out = []
    for name in sorted(f for f in fam if f"{f}-log" in fam):
        for r in sorted(fam[name], key=lambda r: r["l0"]):
            mse, ce = (at_l0(fam[f"{name}-log"], r["l0"], key) for key in ("mse", "ce_recovered_zero"))
            out.append(
                f"- {name} {r['knob']}={r['value']} at L0 {r['l0']:.1f}: MSE raw {r['mse']:.2f}, log "
                + (f"{mse:.2f} (log / raw {mse / r['mse']:.3f}); CE recovered raw {r['ce_recovered_zero']:.4f}, "
                   f"log {ce:.4f}" if mse is not None else "outside the log family's L0 range")
            )  # fmt: skip
    if out:
        out = ["", "log θ vs raw θ at equal L0 (the log family interpolated in log L0 at each raw run's L0):", "", *out]
    return out


def write_outputs(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(report, indent=2) + "\n")
    res = report["results"]
    cols = (
        "trainer",
        "arch",
        "knob",
        "value",
        "l0",
        "mse",
        "explained_variance",
        "ce_recovered_zero",
        "frac_dead",
        "frac_ultra_low",
        "tokens_per_s",
    )
    if any("frac_theta_zero" in r for r in res):  # JumpReLU runs: the θ = 0 trap
        cols = (*cols[:-1], "frac_theta_zero", "theta_median", cols[-1])
    seed = f", seed {report['seed']}" if report.get("seed") else ""  # seed 0 unnamed, as in the files before --seed
    lines = [
        f"Hardware: {report['hardware']}. {report['train_tokens']:,} training tokens per run, d_sae {report['d_sae']}, "
        f"batch {report['batch_size']}, lr {report['lr']} constant{seed}, "
        f"AuxK dead window {report.get('dead_tokens', 204_800):,} "
        f"tokens (both tools); scored on {res[0]['eval_tokens']:,} held-out "
        f"tokens (CE on {res[0]['ce_eval_tokens']:,}). Regenerate: `{report['command']}`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|---" * len(cols) + "|",
    ]
    for r in sorted(res, key=lambda r: (r["trainer"], r["arch"], r["l0"])):
        cell = {c: r.get(c, "") for c in cols}
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cell.values()) + " |")
    g = report["goals"]
    topk_dead = [
        f"- {x['arch']} k={x['value']}: dead {100 * x['frac_dead']:.1f}%, ultra-low {100 * x['frac_ultra_low']:.1f}% "
        f"({verdict(x)})"
        for x in g["topk_dead"]
    ]
    for heading, body in (
        (
            "Goal 1, same architecture at equal L0 (saelab MSE / SAELens MSE, target <= 1.02):",
            same_architecture_lines(g),
        ),
        (
            "Goal 2, best saelab recipe vs SAELens standard at equal L0 (MSE reduction, target >= 20%):",
            best_vs_standard_lines(g),
        ),
        (
            "Goal 3, TopK / BatchTopK with AuxK (dead < 5%, ultra-low < 10%; "
            "-noaux families: AuxK off, listed for reference):",
            topk_dead,
        ),
    ):
        if body:  # a grid without the goal's families (--grid theta) leaves its heading out
            lines += ["", heading, "", *body]
    lines += theta_lines(res)
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    for key, name, label in (
        ("mse", "frontier_mse.png", "MSE (sum over dims, mean over tokens)"),
        ("ce_recovered_zero", "frontier_ce.png", "CE loss recovered (zero ablation)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        fams = sorted({(r["trainer"], r["arch"]) for r in res})
        for trainer, arch in fams:
            rs = sorted((r for r in res if (r["trainer"], r["arch"]) == (trainer, arch)), key=lambda r: r["l0"])
            ax.plot(
                [r["l0"] for r in rs],
                [r[key] for r in rs],
                "o-" if trainer == "saelab" else "s--",
                label=f"{trainer} {arch}",
            )
        ax.set_xscale("log")
        if key == "mse":
            ax.set_yscale("log")
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(label)
        ax.set_title(f"L0 frontier, {report['train_tokens'] // 1000}k tokens, d_sae {report['d_sae']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------- orchestration


def _same_run(a: dict, b: dict) -> bool:
    """Two worker specs train the same SAE: equal in everything but where the files are."""
    return {k: v for k, v in a.items() if k not in ("out", "data")} == {
        k: v for k, v in b.items() if k not in ("out", "data")
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("data/activations"))
    p.add_argument("--lm", type=Path, default=Path("models/lm"))
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--saelens-python", type=Path, default=Path(".venv-saelens/bin/python"))
    p.add_argument("--n-tokens", type=int, default=307_200)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99))
    p.add_argument("--eval-tokens", type=int, default=65_536, help="held-out tokens for MSE, L0, frequencies")
    p.add_argument("--ce-tokens", type=int, default=32_768, help="held-out tokens for CE loss recovered")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="every trainer's initialisation seed (the data order is fixed)")
    p.add_argument(
        "--dead-tokens",
        type=int,
        default=51_200,
        help="AuxK / SAELens dead window in training tokens, both tools (1/6 of the CPU run)",
    )
    p.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="frontier",
        help="frontier: every trainer (GRID); anneal: "
        "saelab TopK's small-k and AuxK settings: k annealing, AuxK weight / width / window, clipping, "
        "resampling, topk-unit with AuxK 1 (ANNEAL_GRID); theta: JumpReLU's θ raw or log (THETA_GRID)",
    )
    p.add_argument("--only", nargs="*", help="trainer:arch pairs to run (default: all of the grid)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--work",
        type=Path,
        help="keep every run here (default: a temporary folder); a run whose folder "
        "holds a result for the same spec is scored again without retraining",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier_cpu"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    if args.worker:
        run_saelab(json.loads(args.spec.read_text()))
        return

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    n_steps = args.n_tokens // args.batch_size
    train_tokens = n_steps * args.batch_size  # the budget, whole batches
    ctx = eval_context(args)
    from saelab.data.cache import ActivationCache

    cache = ActivationCache(args.cache)
    table = GRIDS[args.grid]
    unknown = sorted(set(args.only or []) - {f"{t}:{a}" for t, a in table})
    if unknown:
        p.error(
            f"--only {' '.join(unknown)}: not in --grid {args.grid}; "
            f"its pairs: {' '.join(f'{t}:{a}' for t, a in table)}"
        )
    grid = [(t, a) for t, a in table if not args.only or f"{t}:{a}" in args.only]
    # run folders: other budgets and seeds get their own (the default budget and seed 0 keep the old names)
    suffix = ("" if train_tokens == p.get_default("n_tokens") else f"-n{train_tokens}") + (
        f"-s{args.seed}" if args.seed else ""
    )
    results = []
    with (
        contextlib.nullcontext(args.work) if args.work else tempfile.TemporaryDirectory(prefix="saelab-frontier-")
    ) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        data = tmp / f"train-{train_tokens}.npy"  # one --work folder can hold several budgets
        if not data.exists():
            np.save(data, next(cache.batches(train_tokens)).numpy())  # the cache's first tokens, stored order
        for trainer, family in grid:
            arch, knob, values, fixed = table[(trainer, family)]
            for value in values:
                out = tmp / f"{trainer}-{family}-{value}{suffix}"
                out.mkdir(exist_ok=True)
                spec = {
                    "data": str(data),
                    "d_in": cache.d,
                    "d_sae": args.d_sae,
                    "batch_size": args.batch_size,
                    "n_steps": n_steps,
                    "warmup": args.warmup,
                    "lr": args.lr,
                    "betas": list(args.betas),
                    "seed": args.seed,
                    "device": device,
                    "dtype": "fp32",
                    "arch": arch,
                    "knob": knob,
                    "value": value,
                    knob: value,
                    "out": str(out),
                    "hook": ctx["hook"],
                    "dead_tokens": args.dead_tokens,
                    "dead_window_steps": max(1, args.dead_tokens // args.batch_size),
                    "fixed": fixed,
                    **fixed,
                }
                trained = (out / "result.json").exists() and _same_run(
                    json.loads((out / "spec.json").read_text()), spec
                )
                if (
                    not trained
                ):  # --work: a run trained before with this spec (paths aside) is scored again, not retrained
                    (out / "result.json").unlink(missing_ok=True)
                    (out / "spec.json").write_text(json.dumps(spec))
                if trainer == "sae-lens":
                    if not args.saelens_python.exists():
                        print(f"skipping sae-lens: {args.saelens_python} not found (make frontier creates it)")
                        break
                    cmd = [str(args.saelens_python), str(HERE / "saelens_worker.py"), str(out / "spec.json")]
                else:
                    cmd = [sys.executable, __file__, "--worker", trainer, "--spec", str(out / "spec.json")]
                print(f"== {trainer} {family} {knob}={value}: {n_steps} steps of {args.batch_size}", flush=True)
                if not trained:
                    subprocess.run(cmd, check=True, env=worker_env())
                timing = json.loads((out / "result.json").read_text())
                metrics = score(load_trained(out, trainer, value), ctx)
                results.append(
                    {
                        "trainer": trainer,
                        "arch": family,
                        "architecture": arch,
                        "knob": knob,
                        "value": value,
                        "tokens_per_s": timing["tokens_per_s"],
                        "peak_rss_mb": timing["peak_rss_mb"],
                        **metrics,
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    report = {
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores" if device == "cpu" else torch.cuda.get_device_name(),
        "device": device,
        "train_tokens": train_tokens,
        "d_sae": args.d_sae,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "betas": list(args.betas),
        "seed": args.seed,
        "dead_tokens": args.dead_tokens,
        "grid": {f"{t}:{a}": list(v) for (t, a), v in table.items()},
        "command": "python benchmarks/frontier.py " + " ".join(sys.argv[1:]),
        "results": results,
        "goals": goals(results),
    }
    write_outputs(report, args.out)
    print((args.out / "frontier.md").read_text())


if __name__ == "__main__":
    main()
