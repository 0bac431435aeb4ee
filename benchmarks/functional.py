"""The CE frontier of MSE-trained, KL-trained and KL-fine-tuned SAEs on the same prompts (docs/metrics.md,
"Functional training"; issue: functional training).

    python benchmarks/functional.py [--n-tokens 307200] [--d-sae 2048] [--batch-size 2048] [--lr 3e-3] \
        [--ft-frac 0.1] [--ft-lr 3e-4] [--work /tmp/functional-work] [--out benchmarks/results/functional_cpu]
    # GPU budget (if you have one): --n-tokens 1900000 --d-sae 16384 --batch-size 4096 --ce-tokens 131072

Per architecture (``GRID``: standard_april, TopK, JumpReLU) and value of its sparsity knob, three SAEs, every one
trained from the LM through the stream (``sae.source: stream``: the train split's prompts, the LM in the process):

- ``mse``: the architecture's MSE loss (the activation stream's shuffle buffer);
- ``kl``: ``sae.loss: kl`` from scratch (whole prompts, the knob on its own scale: KL is in nats);
- ``mse+ft``: the ``mse`` SAE fine-tuned on KL + balanced MSE for ``--ft-frac`` of its tokens
  (saelab.training.finetune, the ``finetune`` stage's recipe).

Same width, batch, Adam, constant lr and seed for all; no resampling. Each SAE is scored by saelab's evaluate on
held-out tokens (as benchmarks/frontier.py: the seeded eval sample, CE on its first ``--ce-tokens``). Throughput
is tokens the SAE saw per second of training, on this machine, in this one run.

Output: ``functional.json`` (every run), ``functional.md`` (table, goals, hardware), ``functional_ce.png``,
``functional_mse.png``, ``functional_alive.png`` (against L0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frontier import at_l0, eval_context, score  # noqa: E402
from reader import cpu_model, git_commit  # noqa: E402

import saelab.saes  # noqa: E402, F401  (registers the built-in architectures)
from saelab import registry, threads  # noqa: E402
from saelab.config import FinetuneConfig, SAEConfig, load_params  # noqa: E402
from saelab.data.stream import open_data  # noqa: E402
from saelab.io import sha256_dir, sha256_file  # noqa: E402
from saelab.registry import build  # noqa: E402
from saelab.saes.base import SAE  # noqa: E402
from saelab.training.finetune import finetune_config, finetuned_copy, weights  # noqa: E402
from saelab.training.trainer import Trainer  # noqa: E402

# architecture -> (fixed settings, knob values for the MSE loss, knob values for KL). TopK's k means the same under
# both losses; the L1 / L0 coefficients multiply a penalty that KL (nats, ~0.1) weighs far less than the MSE (tens).
GRID = {
    "standard_april": ({}, [1.0, 2.0, 4.0], [0.003, 0.01, 0.03]),
    "topk": ({}, [16, 32, 64], [16, 32, 64]),
    "jumprelu": ({"sparsity": "tanh"}, [0.1, 0.3, 1.0], [0.001, 0.003, 0.01]),
}
STYLE = {"mse": "o-", "kl": "s--", "kl_ds": "d-.", "mse+ft": "^:"}  # line style per loss in the figures
FUNCTIONAL = ("kl", "kl_ds")  # trained from scratch on a functional loss (kl_ds: KL + the residual stream's MSE)


def config(args, arch: str, value, loss: str, fixed: dict) -> SAEConfig:
    return SAEConfig(
        architecture=arch,
        d_sae=args.d_sae,
        lr=args.lr,
        batch_size=args.batch_size,
        n_tokens=args.n_tokens,
        seed=args.seed,
        lr_warmup_tokens=0,
        lr_decay_frac=0.0,
        checkpoint_every=0,
        resample="none",
        source="stream",
        loss=loss,
        stream_buffer_tokens=max(262_144, 2 * args.batch_size),
        **registry.knob_params(arch, value, fixed),
    )


def train(args, cfg: SAEConfig, sae=None, from_trained=False) -> tuple[SAE, float, int]:
    """(trained SAE, seconds, tokens it saw)."""
    params = load_params(args.params)
    data = open_data(cfg, params.activations, torch.device("cpu"), args.cache, args.lm, args.tokens)
    sae = sae if sae is not None else build(cfg, data.d)
    trainer = Trainer(sae, cfg, torch.device("cpu"), objective=data.objective, from_trained=from_trained)
    st = trainer.run(lambda skip: data.batches(cfg.batch_size, skip))
    return trainer.sae, st.seconds, st.tokens


def finetune(args, cfg: SAEConfig, sae: SAE) -> tuple[SAE, float, int, float]:
    params = load_params(args.params)
    ft = FinetuneConfig(frac_tokens=args.ft_frac, lr=args.ft_lr)
    probe = finetune_config(cfg, ft, 1.0, 0.0)
    data = open_data(probe, params.activations, torch.device("cpu"), args.cache, args.lm, args.tokens)
    t0 = time.perf_counter()
    w = weights(ft, sae, probe, data.objective, next(data.batches(probe.batch_size, 0)))
    balance_s = time.perf_counter() - t0
    ft_cfg = finetune_config(cfg, ft, w["kl_coeff"], w["mse_coeff"])
    sae, seconds, tokens = train(args, ft_cfg, finetuned_copy(sae, ft_cfg), from_trained=True)
    return sae, seconds + balance_s, tokens, w["kl_coeff"]


def run_all(args, ctx) -> list[dict]:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for arch, (fixed, mse_values, kl_values) in GRID.items():
        if args.only and arch not in args.only:
            continue
        knob = registry.knob(arch)[1]
        for loss in args.losses:
            for value in mse_values if loss == "mse" else kl_values:  # kl_ds: KL's scale (plus the residual's MSE)
                name = f"{arch}-{loss}-{value}"
                cached = work / name / "result.json"
                if cached.exists():
                    rows += json.loads(cached.read_text())
                    continue
                cfg = config(args, arch, value, loss, fixed)
                sae, seconds, tokens = train(args, cfg)
                got = [{"arch": arch, "loss": loss, "knob": knob, "value": value, "train_tokens": tokens,
                        "tokens_per_s": tokens / seconds, **score(sae, ctx)}]  # fmt: skip
                sae.save(work / name / "sae", {"hook": ctx["hook"]})
                if loss == "mse":
                    ft, seconds, tokens, coeff = finetune(args, cfg, sae)
                    got.append({"arch": arch, "loss": "mse+ft", "knob": knob, "value": value, "train_tokens": tokens,
                                "tokens_per_s": tokens / seconds, "kl_coeff": coeff, **score(ft, ctx)})  # fmt: skip
                    ft.save(work / name / "finetuned", {"hook": ctx["hook"]})
                cached.write_text(json.dumps(got, indent=1))
                rows += got
                for r in got:
                    line = f"{name} {r['loss']}: L0 {r['l0']:.1f} CE {r['ce_recovered_zero']:.4f} MSE {r['mse']:.2f}"
                    print(f"{line} dead {r['frac_dead']:.3f} {r['tokens_per_s']:.0f} tok/s", flush=True)
    return rows


def goals(rows: list[dict]) -> dict:
    by = {}
    for r in rows:
        by.setdefault((r["arch"], r["loss"]), []).append(r)
    # 1. the fine-tune: CE gap (ce_sae - ce_clean = (1 - CE recovered) x the zero-ablation gap) before and after
    ft = []
    for r in rows:
        if r["loss"] != "mse+ft":
            continue
        src = next(s for s in by[(r["arch"], "mse")] if s["value"] == r["value"])
        reduction = 1 - (1 - r["ce_recovered_zero"]) / (1 - src["ce_recovered_zero"])
        ratio = r["l0"] / src["l0"] if src["l0"] > 0 else math.nan
        ft.append({"arch": r["arch"], "value": r["value"], "gap_reduction": reduction, "l0_ratio": ratio,
                   "met": reduction >= 0.5 and abs(ratio - 1) <= 0.05})  # fmt: skip
    # 2. KL reaching each MSE run's CE recovered: the smallest L0 of any KL family at that CE (log-L0 interpolation);
    # "the best MSE run" is the MSE-trained SAE with the highest CE recovered, any architecture
    reach = []
    best = max((r for r in rows if r["loss"] == "mse"), key=lambda r: r["ce_recovered_zero"], default=None)
    for target in [r for r in rows if r["loss"] == "mse"]:
        l0s = []
        for (arch, loss), fam in by.items():
            if loss not in FUNCTIONAL:
                continue
            pts = sorted((r["l0"], r["ce_recovered_zero"]) for r in fam if r["l0"] > 0)  # log-L0 needs L0 > 0
            for (a, ca), (b, cb) in zip(pts, pts[1:]):
                if min(ca, cb) <= target["ce_recovered_zero"] <= max(ca, cb) and ca != cb:
                    t = (target["ce_recovered_zero"] - ca) / (cb - ca)
                    l0s.append((math.exp(math.log(a) + t * (math.log(b) - math.log(a))), f"{arch} {loss}"))
            reached = [r for r in fam if r["ce_recovered_zero"] >= target["ce_recovered_zero"]]
            l0s += [(r["l0"], f"{arch} {loss}") for r in reached if r["l0"] > 0]
        got = min(l0s, default=None)
        reach.append({"arch": target["arch"], "value": target["value"], "ce": target["ce_recovered_zero"],
                      "l0": target["l0"], "kl_l0": got[0] if got else None, "kl_arch": got[1] if got else None,
                      "is_best_mse": target is best})  # fmt: skip
    # 3. throughput: KL (and the fine-tune) against MSE from the stream, per architecture
    speed = []
    for arch in sorted({r["arch"] for r in rows}):
        mean = {loss: float(np.mean([r["tokens_per_s"] for r in by.get((arch, loss), [])] or [np.nan]))
                for loss in ("mse", *FUNCTIONAL, "mse+ft")}  # fmt: skip
        ratios = {"kl_over_mse": mean["kl"] / mean["mse"], "kl_ds_over_mse": mean["kl_ds"] / mean["mse"],
                  "ft_over_mse": mean["mse+ft"] / mean["mse"]}  # fmt: skip
        speed.append({"arch": arch, **{f"{k}_tokens_per_s": v for k, v in mean.items()}, **ratios})
    # 4. at equal L0: KL vs MSE families' CE, MSE and alive share
    equal = []
    for r in rows:
        if r["loss"] not in FUNCTIONAL or (r["arch"], "mse") not in by:
            continue
        mse_fam = by[(r["arch"], "mse")]
        equal.append({"arch": r["arch"], "loss": r["loss"], "value": r["value"], "l0": r["l0"],
                      "kl_ce": r["ce_recovered_zero"],
                      "mse_ce": at_l0(mse_fam, r["l0"], "ce_recovered_zero"), "kl_mse": r["mse"],
                      "mse_mse": at_l0(mse_fam, r["l0"], "mse"), "kl_alive": 1 - r["frac_dead"],
                      "mse_alive": at_l0(mse_fam, r["l0"], "frac_dead")})  # fmt: skip
        if equal[-1]["mse_alive"] is not None:
            equal[-1]["mse_alive"] = 1 - equal[-1]["mse_alive"]
    return {"finetune": ft, "kl_reach": reach, "throughput": speed, "equal_l0": equal}


def best_cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``a`` its best cosine with any row of ``b``, and per row of ``b`` with any of ``a``."""
    a, b = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12), b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = a @ b.T
    return cos.max(1).values, cos.max(0).values


def overlap(rows: list[dict], work: Path, w_out: torch.Tensor | None) -> list[dict]:
    """Decoder overlap of each KL run with its architecture's MSE run nearest in L0: per KL feature, the best cosine
    with any MSE decoder row (unit rows; docs/metrics.md's best-match cosine, here across losses), its median and the
    shares above 0.9 and 0.7; and the other way round. With ``w_out`` (the MLP's output matrix, when the hook is
    mlp.hook_post) also in the space the LM reads the hook through: rows · W_outᵀ, where KL can see a direction."""
    out = []
    for r in rows:
        if r["loss"] not in FUNCTIONAL:
            continue
        mse = [m for m in rows if m["arch"] == r["arch"] and m["loss"] == "mse"]
        if not mse:
            continue
        if r["l0"] <= 0 or not (mse := [m for m in mse if m["l0"] > 0]):
            continue  # an SAE with no active feature has no nearest L0 (and no decoder to compare)
        m = min(mse, key=lambda m: abs(math.log(m["l0"] / r["l0"])))
        a, b = (SAE.load(work / f"{x['arch']}-{x['loss']}-{x['value']}" / "sae")[0].W_dec.detach() for x in (r, m))
        kl_best, mse_best = best_cosines(a, b)
        seen = {}
        if w_out is not None:
            kl_out, _ = best_cosines(a @ w_out.T, b @ w_out.T)
            seen = {"kl_out_best_median": float(kl_out.median()),
                    "kl_out_share_above_0.9": float((kl_out > 0.9).float().mean())}  # fmt: skip
        out.append({"arch": r["arch"], "kl_loss": r["loss"], "kl_value": r["value"], "kl_l0": r["l0"],
                    "mse_value": m["value"],
                    "mse_l0": m["l0"], "kl_best_median": float(kl_best.median()),
                    "kl_share_above_0.9": float((kl_best > 0.9).float().mean()),
                    "kl_share_above_0.7": float((kl_best > 0.7).float().mean()),
                    "mse_best_median": float(mse_best.median()),
                    "mse_share_above_0.7": float((mse_best > 0.7).float().mean()),
                    "kl_frac_ultra_low": r["frac_ultra_low"], "mse_frac_ultra_low": m["frac_ultra_low"],
                    "kl_frac_dense": r.get("frac_dense"), "mse_frac_dense": m.get("frac_dense"), **seen})  # fmt: skip
    return out


def fmt(v, spec=".4g"):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def write_outputs(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "functional.json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
    rows, g = report["runs"], report["goals"]
    cols = ("arch", "loss", "knob", "value", "l0", "ce_recovered_zero", "mse", "explained_variance", "frac_dead",
            "frac_ultra_low", "train_tokens", "tokens_per_s")  # fmt: skip
    lines = [
        f"Hardware: {report['hardware']}. Each SAE: {report['n_tokens']:,} training tokens from the stream (KL: "
        f"the covered tokens of whole prompts), d_sae {report['d_sae']}, batch {report['batch_size']}, lr "
        f"{report['lr']} constant, seed {report['seed']}; fine-tune: {report['ft_frac']:.0%} of that at lr "
        f"{report['ft_lr']}, weights balanced (KL x MSE0/(2 KL0) + MSE / 2). Scored on {report['eval_tokens']:,} "
        f"held-out tokens (CE on {report['ce_eval_tokens']:,}). Regenerate: `{report['command']}`.",
        "",
        "| " + " | ".join(cols) + " |",
        "|---" * len(cols) + "|",
    ]
    for r in sorted(rows, key=lambda r: (r["arch"], r["loss"], r["l0"])):
        lines.append("| " + " | ".join(fmt(r.get(c)) if not isinstance(r.get(c), str) else r[c] for c in cols) + " |")
    lines += ["", "Goal 1, KL fine-tune (CE gap reduction >= 50% at L0 within ±5%):", ""]
    lines += [f"- {x['arch']} {x['value']}: gap reduction {100 * x['gap_reduction']:.1f}%, L0 ratio "
              f"{x['l0_ratio']:.3f} ({'met' if x['met'] else 'missed'})" for x in g["finetune"]]  # fmt: skip
    lines += ["", "Goal 2, the smallest L0 at which a KL-trained SAE reaches each MSE run's CE recovered "
              "(target: <= half the MSE run's L0 for the best MSE recipe):", ""]  # fmt: skip
    lines += [f"- {x['arch']} {x['value']} (L0 {x['l0']:.1f}, CE recovered {x['ce']:.4f}"
              f"{', the best MSE run' if x['is_best_mse'] else ''}): "
              + (f"{x['kl_arch']} at L0 {x['kl_l0']:.1f} = "
                 f"{fmt(x['kl_l0'] / x['l0'] if x['l0'] > 0 else None, '.2f')}x" if x["kl_l0"] is not None else
                 "no functional run reaches it") for x in g["kl_reach"]]  # fmt: skip
    lines += ["", "Goal 3, throughput (tokens the SAE saw per second; target KL >= 0.5x MSE from the stream):", ""]
    lines += [f"- {x['arch']}: MSE {fmt(x['mse_tokens_per_s'], '.0f')}, KL {fmt(x['kl_tokens_per_s'], '.0f')} "
              f"({fmt(x['kl_over_mse'], '.2f')}x), KL+ds {fmt(x['kl_ds_tokens_per_s'], '.0f')} "
              f"({fmt(x['kl_ds_over_mse'], '.2f')}x), fine-tune {fmt(x['mse+ft_tokens_per_s'], '.0f')} "
              f"({fmt(x['ft_over_mse'], '.2f')}x)" for x in g["throughput"]]  # fmt: skip
    lines += ["", "At equal L0 (each KL run against its architecture's MSE family, interpolated in log L0):", ""]
    lines += [f"- {x['arch']} {x['loss']} {x['value']} at L0 {x['l0']:.1f}: CE recovered {x['kl_ce']:.4f} vs MSE "
              f"{fmt(x['mse_ce'])}; MSE {x['kl_mse']:.2f} vs MSE-trained {fmt(x['mse_mse'])}; alive "
              f"{x['kl_alive']:.3f} vs MSE {fmt(x['mse_alive'], '.3f')}" for x in g["equal_l0"]]  # fmt: skip
    lines += ["", "Decoder overlap, each KL run against its architecture's MSE run nearest in L0 (best-match cosine of "
              "unit decoder rows; all features, dead ones included):", ""]  # fmt: skip
    lines += [f"- {x['arch']} {x['kl_loss']} {x['kl_value']} (L0 {x['kl_l0']:.1f}) vs MSE {x['mse_value']} "
              f"(L0 {x['mse_l0']:.1f}): "
              f"KL features' best cosine median {x['kl_best_median']:.3f}, > 0.9 {100 * x['kl_share_above_0.9']:.1f}%, "
              f"> 0.7 {100 * x['kl_share_above_0.7']:.1f}%; MSE features' median {x['mse_best_median']:.3f}, > 0.7 "
              f"{100 * x['mse_share_above_0.7']:.1f}%; ultra-low KL {100 * x['kl_frac_ultra_low']:.1f}% vs MSE "
              f"{100 * x['mse_frac_ultra_low']:.1f}%; dense KL {fmt(x['kl_frac_dense'], '.3f')} vs MSE "
              f"{fmt(x['mse_frac_dense'], '.3f')}"
              + (f"; through W_out: KL features' median {x['kl_out_best_median']:.3f}, > 0.9 "
                 f"{100 * x['kl_out_share_above_0.9']:.1f}%" if "kl_out_best_median" in x else "")
              for x in report.get("overlap", [])]  # fmt: skip
    (out / "functional.md").write_text("\n".join(lines) + "\n")
    for key, name, label in (("ce_recovered_zero", "functional_ce.png", "CE loss recovered (zero ablation)"),
                             ("mse", "functional_mse.png", "activation MSE (sum over dims)"),
                             ("frac_dead", "functional_alive.png", "share of dead features")):  # fmt: skip
        fig, ax = plt.subplots(figsize=(6, 4))
        for (arch, loss), style in ((k, s) for k in sorted({(r["arch"], r["loss"]) for r in rows})
                                    for s in [STYLE[k[1]]]):  # fmt: skip
            pts = sorted((r["l0"], r[key]) for r in rows if r["arch"] == arch and r["loss"] == loss)
            ax.plot(*zip(*pts), style, label=f"{arch} {loss}")
        ax.set_xscale("log")
        ax.set_xlabel("L0 (held-out tokens)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)


# what shapes a cached result (work/<key>/<run>/result.json holds the SAE's scores, so the evaluation's settings count
# too); inputs are keyed by content, not by path
KEY_ARGS = ("n_tokens", "d_sae", "batch_size", "lr", "seed", "ft_frac", "ft_lr", "eval_tokens", "ce_tokens")
KEY_INPUTS = ("params", "lm", "tokens", "cache")


def settings_key(args) -> str:
    """A short hash of the arguments and input contents that shape a result (the work directory's subfolder)."""
    settings = {k: str(getattr(args, k)) for k in KEY_ARGS}
    for k in KEY_INPUTS:
        path = Path(getattr(args, k))
        settings[k] = sha256_dir(path) if path.is_dir() else sha256_file(path) if path.exists() else "missing"
    settings["grid"] = repr(GRID)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def json_safe(obj):
    """NaN and infinities as None (JSON has no NaN: a strict reader refuses the file)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments that shape a run (its settings key), shared with benchmarks/functional_features.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cache", type=Path, default=Path("data/activations"), help="for evaluate's mean ablation only")
    p.add_argument("--lm", type=Path, default=Path("models/lm"))
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--n-tokens", type=int, default=307_200)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ft-frac", type=float, default=0.1, help="fine-tune tokens as a share of --n-tokens")
    p.add_argument("--ft-lr", type=float, default=3e-4)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--ce-tokens", type=int, default=32_768)
    p.add_argument("--only", nargs="*", help="architectures to run (default: all of GRID)")
    p.add_argument("--losses", nargs="+", choices=("mse", *FUNCTIONAL), default=["mse", "kl"],
                   help="losses to train from scratch (mse runs also get their KL fine-tune)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/functional-work"), help="runs kept here, reused")
    return p


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/functional_cpu"))
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    args.work = args.work / settings_key(args)  # a run is reused only under the settings it was trained with
    ctx = eval_context(args)
    rows = run_all(args, ctx)
    report = {
        "hardware": f"{cpu_model()}, {torch.get_num_threads()} torch threads, {platform.machine()}",
        "command": "python benchmarks/functional.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),  # the code at report time (runs reused from --work may be older)
        **{
            k: getattr(args, k) for k in ("n_tokens", "d_sae", "batch_size", "lr", "seed", "ft_frac", "ft_lr", "losses")
        },
        "eval_tokens": rows[0]["eval_tokens"] if rows else None,
        "ce_eval_tokens": rows[0]["ce_eval_tokens"] if rows else None,
        "inputs_sha256": {k: sha256_dir(Path(getattr(args, k))) for k in ("lm", "tokens")},  # which LM and tokens
        "runs": rows,
    }
    report["goals"] = goals(rows)
    w_out = None
    if ctx["hook"].endswith("mlp.hook_post"):  # the MLP's output matrix (d_model, d_mlp): how the LM reads the hook
        w_out = next(p for n, p in ctx["model"].named_parameters() if n.endswith("fc_out._original_component.weight"))
        w_out = w_out.detach()
    report["overlap"] = overlap(rows, args.work, w_out)
    write_outputs(report, args.out)
    print((args.out / "functional.md").read_text())


if __name__ == "__main__":
    main()
