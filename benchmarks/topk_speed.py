"""TopK training speed at 512 -> 16,384, k = 32, batch 4,096, fp32: saelab vs SAELens vs sparsify, one run.

    make topk-speed        # creates .venv-saelens and .venv-sparsify, then runs this
    python benchmarks/topk_speed.py --saelens-python .venv-saelens/bin/python \
        --sparsify-python .venv-sparsify/bin/python [--steps 40] [--lr 1e-3] [--dead-tokens 81920] [--repeat 1] \
        [--out benchmarks/results/topk_speed_cpu.json]
    # on a GPU add --device cuda: saelab-dense is then the path the pipeline takes there by default

Every trainer runs in a process of its own on the same ``--steps`` batches of the activation
cache (benchmarks/harness.py: the clock starts after ``--warmup`` steps), with the same width, k,
batch, Adam betas and constant lr. Trainers:

- ``saelab``          saelab's TopK (its default recipe: free decoder norms, AuxK 1) through its Trainer
                      (sparse path on CPU: TopKEncode + embedding_bag);
- ``saelab-long``     the same for ``--long-factor`` times the steps (for the comparison at equal MSE);
- ``saelab-long-noclip`` saelab-long without gradient-norm clipping (``grad_clip: 0``);
- ``saelab-unit``     saelab with sparsify's recipe (unit-norm decoder rows, AuxK 1/32, no clipping) from
                      sparsify's initial weights (sparsify_init_): the same steps as sparsify's where
                      AuxK does not run, so its speed-up compares at equal MSE without a curve;
- ``saelab-dense``    the same as ``saelab`` on the dense autograd path (what the sparse path saves);
- ``sae-lens``        SAELens 6.54 TopKTrainingSAE + SAETrainer, its defaults (dense activations);
- ``sae-lens-sparse`` the same with its ``use_sparse_activations: true``;
- ``sparsify``        EleutherAI sparsify's SparseCoder (fused encoder, embedding_bag decoder), its step by hand.

Each trained SAE is scored by one function on ``--eval-tokens`` held-out cache tokens (ReLU of
the top-k pre-activations; MSE = mean over tokens of the summed squared error; ``frac_dead_eval``:
latents that never fire there). ``auxk_steps`` counts the timed and warm-up steps in which AuxK ran
(some latent dead for ``--dead-tokens``). AuxK is not the same work in every trainer: saelab's and
SAELens's pass its gradient to the encoder (Gao et al.), sparsify 1.3.3's FusedEncoder drops the
gradient of the pre-activations AuxK reads, so its AuxK trains dead latents' decoder rows only and
costs less; ``--dead-tokens`` larger than the run switches AuxK off in every trainer, which times
the bare step.

The speed goal holds only "at equal final MSE within 1%". Recipes differ in how far the same steps
get, so ``equal_mse`` compares time at equal MSE from per-step curves: each trainer records the MSE
of every batch before its update (each batch is fresh, so a held-out estimate; harness.note), and
the speed-up is the peer's time to its own final level (running mean of 5 batches) over
saelab-long's time to the same level. SAELens's trainer records no curve; there the bound from
held-out MSE at the end is used (equal_mse).

The roofline part counts the FLOPs a step needs: dense, 5 matmuls of 2·B·d_in·d_sae; sparse,
the encoder's forward matmul (2·B·d_in·d_sae) and four B·k·d_in products (decoder forward, the
decoder's and the activations' gradients, the encoder's gradient), plus four B·k_aux·d_in ones in a
step where AuxK runs; it compares the step with the encoder matmul alone timed on this machine, the
part no TopK trainer can skip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import TimedBatches, finish, worker_env  # noqa: E402
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.eval.metrics import ReconSums  # noqa: E402

WINDOW = 5  # steps in the running mean of batch MSE that equal_mse compares
# saelab-unit: sparsify's recipe in saelab (unit-norm decoder rows, AuxK coefficient 1/32, no gradient clipping)
# from sparsify's initial weights (sparsify_init), so that the two take the same steps where AuxK does not run
# saelab-long-noclip: the default recipe without gradient-norm clipping (AuxK's gradient counts in the clipped
# norm, so with clipping AuxK also shrinks the reconstruction's step)
RECIPES = {"saelab-unit": {"decoder": "unit", "aux_coeff": 1 / 32}, "saelab-long-noclip": {"grad_clip": 0.0}}
SPARSIFY_INIT = {"saelab-unit"}


@torch.no_grad()
def sparsify_init_(sae, seed: int) -> None:
    """sparsify 1.3.3's SparseCoder initialisation, the same draws: under ``seed`` an nn.Linear(d_in, d_sae)
    (kaiming-uniform rows of norm about 0.58), its bias zeroed; decoder rows its weight at unit norm."""
    torch.manual_seed(seed)
    w = torch.nn.Linear(sae.d_in, sae.d_sae).weight
    sae.W_enc.copy_(w.T)
    sae.b_enc.zero_()
    sae.W_dec.copy_(w / (w.norm(dim=1, keepdim=True) + torch.finfo(w.dtype).eps))


def run_saelab(spec: dict) -> None:
    from saelab.config import SAEConfig
    from saelab.registry import build
    from saelab.training.trainer import Trainer

    cfg = SAEConfig(
        architecture="topk",
        d_sae=spec["d_sae"],
        lr=spec["lr"],
        beta1=spec["betas"][0],
        beta2=spec["betas"][1],
        batch_size=spec["batch_size"],
        n_tokens=spec["n_steps"] * spec["batch_size"],
        seed=0,
        lr_warmup_tokens=0,
        lr_decay_frac=0.0,
        checkpoint_every=0,
        device=spec["device"],
        log_every=1,
        topk={"k": spec["k"], "dead_tokens": spec["dead_tokens"], **spec.get("recipe", {})},
    )
    device = torch.device(spec["device"])
    sae = build(cfg, spec["d_in"]).to(device)
    sae.sparse_path = spec["sparse_path"]
    if spec.get("sparsify_init"):
        sparsify_init_(sae, spec["seed"])
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    rows = []
    Trainer(sae, cfg, device).run(
        lambda skip: batches, log=lambda step, row: (batches.note(row["mse"]), rows.append(row))
    )
    finish(
        Path(spec["out"]),
        batches,
        {k: getattr(sae, k) for k in ("W_enc", "W_dec", "b_enc", "b_dec")},
        spec["device"],
        {"sparse_path": sae.uses_sparse_path(device), "auxk_steps": sum(r["auxk"] > 0 for r in rows)},
    )


@torch.no_grad()
def score(weights_file: Path, x_eval: torch.Tensor, k: int) -> dict:
    """MSE, explained variance and the latents that never fire on the held-out tokens, by the library's one
    implementation (saelab.eval.metrics.ReconSums, docs/metrics.md), whatever trainer wrote the weights."""
    from safetensors.torch import load_file

    w = load_file(str(weights_file))
    sums = ReconSums()
    for x in x_eval.split(4096):
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        v, i = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter_(-1, i, v.relu())
        sums.add(x, f @ w["W_dec"] + w["b_dec"], f)
    r = sums.result()
    return {
        "mse": r["mse"],
        "explained_variance": r["explained_variance"],
        "frac_dead_eval": float((sums.fired == 0).double().mean()),
    }  # latents that never fire on the held-out tokens


def time_to_mse(curve: list, target: float, window: int = WINDOW) -> float | None:
    """Seconds on the clock when the running mean of ``window`` consecutive batch MSEs first reaches
    ``target`` (None if it never does). curve: [[seconds, batch MSE], ...] per step (harness.note)."""
    for i in range(window - 1, len(curve)):
        if curve[i][0] >= 0 and sum(m for _, m in curve[i - window + 1 : i + 1]) / window <= target:
            return curve[i][0]  # the clock starts after the warm-up steps: earlier points are not timed
    return None


def equal_mse(results: dict, curves: dict) -> dict:
    """saelab's speed-up at equal MSE, from the per-step batch MSE curves (each batch is fresh, so its MSE
    before the update is a held-out estimate): the target is the mean batch MSE of the peer's last
    ``WINDOW`` steps; each trainer's time to it is when its running mean of ``WINDOW`` batch MSEs first
    reaches it (time_to_mse). saelab-long trains longer than the peers, so it can reach a lower MSE;
    speed-up = peer seconds / saelab-long seconds. Peers without a curve (SAELens's own trainer) fall
    back to the bound from the held-out MSE: where a saelab run (saelab, else saelab-long) ends at or
    below their final MSE, its whole run bounds its time to that MSE, and peer seconds / its seconds
    is a lower bound."""
    long = results.get("saelab-long")
    out = {}
    for name, r in results.items():
        if name.startswith("saelab") or long is None:
            continue
        if curves.get(name) and curves.get("saelab-long"):
            target = sum(m for _, m in curves[name][-WINDOW:]) / WINDOW
            t_peer, t_long = time_to_mse(curves[name], target), time_to_mse(curves["saelab-long"], target)
            out[name] = {
                "method": f"time to the peer's final batch MSE (running mean of {WINDOW} steps)",
                "target_batch_mse": target,
                "peer_seconds": t_peer,
                "saelab_long_seconds": t_long,
                "speedup_at_equal_mse": t_peer / t_long if t_peer is not None and t_long else None,
            }
            if curves.get("saelab-long-noclip"):  # the default recipe without clipping, to the same target
                t_nc = time_to_mse(curves["saelab-long-noclip"], target)
                out[name].update(
                    saelab_long_noclip_seconds=t_nc,
                    speedup_noclip=t_peer / t_nc if t_peer is not None and t_nc else None,
                )
            continue
        below = [n for n in ("saelab", "saelab-long") if n in results and results[n]["mse"] <= r["mse"]]
        best = min(below, key=lambda n: results[n]["timed_seconds"], default=None)
        out[name] = {
            "method": "lower bound from held-out MSE at the end: the shortest saelab run (default recipe) "
            "that ends at or below the peer's MSE",
            "peer_mse": r["mse"],
            "saelab_run": best,
            "saelab_mse": results[best]["mse"] if best else None,
            "peer_seconds": r["timed_seconds"],
            "saelab_seconds": results[best]["timed_seconds"] if best else None,
            "speedup_at_equal_mse_at_least": r["timed_seconds"] / results[best]["timed_seconds"] if best else None,
        }
    if (
        "saelab-unit" in results and "sparsify" in results
    ):  # the same recipe from the same weights: the goal's own terms
        u, sp = results["saelab-unit"], results["sparsify"]
        out["sparsify-same-recipe"] = {
            "method": "saelab-unit (sparsify's recipe and initial weights) vs sparsify, the same number of steps",
            "saelab_mse": u["mse"],
            "peer_mse": sp["mse"],
            "mse_difference": u["mse"] / sp["mse"] - 1,
            "speedup": u["tokens_per_s"] / sp["tokens_per_s"],
        }
        ru, rs = u.get("tokens_per_s_runs") or [], sp.get("tokens_per_s_runs") or []
        if len(ru) == len(rs) > 1:  # rounds are interleaved: the ratio within each round, and its median
            per_round = sorted(a / b for a, b in zip(ru, rs))
            out["sparsify-same-recipe"].update(
                speedup_per_round=per_round, speedup_median_of_rounds=per_round[len(per_round) // 2]
            )
    return out


def roofline(d_in: int, d_sae: int, batch: int, k: int, seconds_per_step: dict, device: str, reps: int = 5) -> dict:
    """FLOPs per token of the dense and the sparse step, and the encoder matmul's own time on this machine."""
    x, w, b = (
        torch.randn(batch, d_in, device=device),
        torch.randn(d_in, d_sae, device=device),
        torch.zeros(d_sae, device=device),
    )
    torch.addmm(b, x, w)
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.addmm(b, x, w)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t.append(time.perf_counter() - t0)
    enc = min(t)
    dense_flop = 5 * 2 * d_in * d_sae
    sparse_flop = 2 * d_in * d_sae + 4 * 2 * k * d_in
    out = {
        "dense_flop_per_token": dense_flop,
        "sparse_flop_per_token": sparse_flop,
        "auxk_flop_per_token_when_active": 4 * 2 * (d_in // 2) * d_in,  # k_aux = d_in / 2, every trainer's default
        "encoder_matmul_seconds": enc,
        "encoder_matmul_gflop_per_s": 2 * batch * d_in * d_sae / enc / 1e9,
        "ceiling_tokens_per_s": batch / enc,
    }
    for name, s in seconds_per_step.items():
        flop = dense_flop if name in ("saelab-dense", "sae-lens") else sparse_flop
        out[name] = {"gflop_per_s_needed": flop * batch / s / 1e9, "fraction_of_encoder_ceiling": enc / s}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("data/activations"))
    p.add_argument("--saelens-python", type=Path, default=Path(".venv-saelens/bin/python"))
    p.add_argument("--sparsify-python", type=Path, default=Path(".venv-sparsify/bin/python"))
    p.add_argument("--d-sae", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999))
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument(
        "--dead-tokens",
        type=int,
        default=81_920,
        help="AuxK dead window (tokens; SAELens gets it in steps); short enough that AuxK runs in every trainer",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--trainers",
        nargs="+",
        default=["saelab", "saelab-long", "saelab-unit", "saelab-dense", "sae-lens", "sae-lens-sparse", "sparsify"],
    )
    p.add_argument(
        "--long-factor",
        type=int,
        default=3,
        help="saelab-long trains this many times --steps (more tokens), to compare at equal MSE",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/topk_speed_cpu.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every trainer this many times, interleaved; the median run by tokens/s is reported",
    )
    p.add_argument(
        "--recompute",
        action="store_true",
        help="recompute the derived equal_mse field of --out from its stored results and curves (no training)",
    )
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    if args.recompute:
        report = json.loads(args.out.read_text())
        report["equal_mse"] = equal_mse(report["results"], report["curves"])
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["equal_mse"], indent=1))
        return
    if args.worker:
        run_saelab(json.loads(args.spec.read_text()))
        return

    from saelab.data.cache import ActivationCache

    cache = ActivationCache(args.cache)
    n_train = args.steps * args.batch_size
    n_long = n_train * args.long_factor
    if n_long + args.eval_tokens > cache.n_tokens:
        raise SystemExit(
            f"{n_long + args.eval_tokens} training + eval tokens but {args.cache} holds {cache.n_tokens}: "
            "held-out tokens would repeat training ones; lower --steps or --long-factor"
        )
    results, curves = {}, {}
    with tempfile.TemporaryDirectory(prefix="saelab-topk-") as tmp:
        tmp = Path(tmp)
        allx = next(cache.batches(n_long + args.eval_tokens)).float().numpy()  # stored order: same for every trainer
        np.save(tmp / "train.npy", allx[:n_long])  # every trainer reads its first n_train; saelab-long all of it
        x_eval = torch.from_numpy(allx[n_long:].copy())
        del allx
        base = {
            "data": str(tmp / "train.npy"),
            "d_in": cache.d,
            "d_sae": args.d_sae,
            "k": args.k,
            "batch_size": args.batch_size,
            "n_steps": args.steps,
            "warmup": args.warmup,
            "lr": args.lr,
            "betas": list(args.betas),
            "seed": 0,
            "device": args.device,
            "dtype": "fp32",
            "dead_tokens": args.dead_tokens,
            "dead_window_steps": max(1, args.dead_tokens // args.batch_size),
            "arch": "topk",
        }
        runs: dict[str, list] = {}
        for rep, name in [(rep, name) for rep in range(args.repeat) for name in args.trainers]:  # interleaved
            if "error" in results.get(name, {}):
                continue
            out = tmp / f"{name}-{rep}"
            out.mkdir()
            spec = {
                **base,
                "out": str(out),
                "sparse_path": name != "saelab-dense",
                "recipe": RECIPES.get(name, {}),
                "sparsify_init": name in SPARSIFY_INIT,
                "sparse_activations": name == "sae-lens-sparse",
                "n_steps": args.steps * (args.long_factor if name.startswith("saelab-long") else 1),
            }
            (out / "spec.json").write_text(json.dumps(spec))
            py = {
                "sae-lens": args.saelens_python,
                "sae-lens-sparse": args.saelens_python,
                "sparsify": args.sparsify_python,
            }.get(name)
            if py is not None and not py.exists():
                print(f"skipping {name}: {py} not found (make topk-speed creates it)")
                continue
            script = {"sparsify": HERE / "sparsify_worker.py"}.get(name, HERE / "saelens_worker.py")
            cmd = (
                [str(py), str(script), str(out / "spec.json")]
                if py
                else [sys.executable, __file__, "--worker", "--spec", str(out / "spec.json")]
            )
            print(
                f"== {name} (run {rep + 1} of {args.repeat}): {args.steps} steps of {args.batch_size}, "
                f"{cache.d} -> {args.d_sae}, k {args.k}",
                flush=True,
            )
            run = subprocess.run(cmd, env=worker_env(), stderr=subprocess.PIPE, text=True)
            if run.returncode != 0:  # a peer's failure is a result too: recorded, not fatal
                err = [line for line in run.stderr.splitlines() if "Error" in line][-1:] or run.stderr.splitlines()[-1:]
                results[name] = {"error": err[0][:500]}
                print(f"{name} failed: {results[name]['error']}", flush=True)
                continue
            r = json.loads((out / "result.json").read_text())
            runs.setdefault(name, []).append((r, out))
            print(json.dumps({k: r[k] for k in ("tokens_per_s", "timed_seconds", "peak_rss_mb")}), flush=True)
        for name, rs in runs.items():  # the median run by tokens/s stands for the trainer; every run's speed is kept
            r, out = sorted(rs, key=lambda t: t[0]["tokens_per_s"])[len(rs) // 2]
            curves[name] = r.get("curve") or []
            results[name] = {
                **{k: r[k] for k in ("tokens_per_s", "timed_seconds", "timed_tokens", "peak_rss_mb")},
                "tokens_per_s_runs": [x["tokens_per_s"] for x, _ in rs],
                "auxk_steps": r.get("auxk_steps"),
                **score(out / "sae.safetensors", x_eval, args.k),
            }
            print(name, json.dumps(results[name]), flush=True)

    failed = {n: r for n, r in results.items() if "error" in r}
    results = {n: r for n, r in results.items() if "error" not in r}
    ref = results.get("saelab")
    for r in results.values():
        if ref:
            r["saelab_speedup"] = ref["tokens_per_s"] / r["tokens_per_s"]
            r["mse_vs_saelab"] = r["mse"] / ref["mse"] - 1
    sec = {n: args.batch_size / r["tokens_per_s"] for n, r in results.items()}
    report = {
        "hardware": f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
        if args.device == "cpu"
        else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": {"d_in": cache.d, "d_sae": args.d_sae, "k": args.k, "batch": args.batch_size},
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "repeat": args.repeat,
        "lr": args.lr,
        "betas": list(args.betas),
        "eval_tokens": args.eval_tokens,
        "command": "python benchmarks/topk_speed.py " + " ".join(sys.argv[1:]),
        "goals": {"vs_sae_lens": ">= 1.5x tokens/s", "vs_sparsify": ">= 1.2x tokens/s", "mse": "within 1%"},
        "results": results,
        "failed": failed,
        "equal_mse": equal_mse(results, curves),
        "curves": curves,
        "roofline": roofline(cache.d, args.d_sae, args.batch_size, args.k, sec, args.device),
    }
    print(f"{'trainer':16} {'tok/s':>8} {'saelab x':>9} {'MSE':>8} {'vs saelab':>9} {'peak RSS MB':>11}")
    for name, r in results.items():
        print(
            f"{name:16} {r['tokens_per_s']:8.0f} {r.get('saelab_speedup', float('nan')):9.2f} {r['mse']:8.2f} "
            f"{100 * r.get('mse_vs_saelab', float('nan')):8.1f}% {r['peak_rss_mb']:11.0f}"
        )
    for name, e in report["equal_mse"].items():
        x = e.get("speedup_at_equal_mse", e.get("speedup_at_equal_mse_at_least", e.get("speedup")))
        print(f"equal MSE vs {name}: {'n/a' if x is None else f'{x:.2f}x'} ({e['method']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
