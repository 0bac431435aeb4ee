"""SAE trainers side by side on the same cached activations: saelab, SAELens and the reference code's loop.

    make benchmark          # creates .venv-saelens (SAELens + torch 2.13.0) and runs this
    python benchmarks/trainers.py --cache data/activations --saelens-python .venv-saelens/bin/python \
        [--n-tokens 307200] [--d-sae 2048] [--batch-size 2048] [--l1 1.0] [--lr 3e-3] [--device auto] \
        [--out benchmarks/results/trainers_cpu.json]

The first ``n_tokens`` of the Parquet cache (in its shuffled order) are copied once into a
.npy file; every trainer then reads the same batches in the same order from it, in a fresh
process of its own (so peak memory is its own), with the same shape, lr, Adam betas,
L1 coefficient (in saelab's per-token convention) and a constant lr. Trainers:

- ``saelab``          this project's Trainer (resampling off, as the others do not resample this early);
- ``saelab-parquet``  the same, reading the Parquet cache through ActivationCache instead of the .npy;
- ``sae-lens``        SAELens's StandardTrainingSAE + SAETrainer (its own defaults otherwise:
                      decoder init norm 0.1, grad-norm clipping at 1, L1 weighted by decoder norms);
- ``reference``       the reference code's training loop (benchmarks/reference_loop.py).

tokens/s leaves out the first ``--warmup`` steps of each. Every trained SAE is then scored
here, by one function, on ``--eval-tokens`` cache tokens that no trainer saw: MSE (mean
over tokens of the summed squared error), L0, fraction of variance explained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import TimedBatches, finish, worker_env  # noqa: E402
from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.eval.metrics import ReconSums  # noqa: E402


def hardware(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


# ---------------------------------------------------------------- workers (one process each)


def run_saelab(spec: dict) -> None:
    from saelab.config import SAEConfig
    from saelab.data.cache import ActivationCache
    from saelab.registry import build
    from saelab.training.trainer import Trainer

    device = torch.device(spec["device"])
    cfg = SAEConfig(
        d_sae=spec["d_sae"],
        l1_coeff=spec["l1_coeff"],
        lr=spec["lr"],
        beta1=spec["betas"][0],
        beta2=spec["betas"][1],
        batch_size=spec["batch_size"],
        n_tokens=spec["n_steps"] * spec["batch_size"],
        seed=spec["seed"],
        resample_stop=0.0,
        lr_warmup_tokens=0,
        lr_decay_frac=0.0,
        dtype=spec["dtype"],
        device=spec["device"],
        compile=spec["compile"],
        checkpoint_every=0,
    )
    source = ActivationCache(spec["cache"]).batches(spec["batch_size"]) if spec["source"] == "parquet" else None
    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"], source)
    trainer = Trainer(build(cfg, spec["d_in"]).to(device), cfg, device)
    trainer.run(lambda skip: batches)
    finish(Path(spec["out"]), batches, dict(trainer.sae.named_parameters()), spec["device"])


def run_reference(spec: dict) -> None:
    import reference_loop

    batches = TimedBatches(Path(spec["data"]), spec["batch_size"], spec["n_steps"], spec["warmup"])
    enc = reference_loop.train(
        batches,
        spec["d_in"],
        spec["d_sae"],
        spec["l1_coeff"],
        spec["lr"],
        tuple(spec["betas"]),
        spec["n_steps"],
        spec["batch_size"],
        spec["device"],
    )
    finish(Path(spec["out"]), batches, dict(enc.named_parameters()), spec["device"])


WORKERS = {"saelab": run_saelab, "saelab-parquet": run_saelab, "reference": run_reference}


# ---------------------------------------------------------------- orchestration


def materialise(cache_dir: Path, n_tokens: int, out: Path) -> tuple[np.ndarray, int]:
    """Copy the first ``n_tokens`` of the cache into ``out`` (.npy, the cache's dtype or fp32 for bf16)."""
    from saelab.data.cache import ActivationCache

    cache = ActivationCache(cache_dir)
    if n_tokens > cache.n_tokens:
        raise SystemExit(f"--n-tokens + --eval-tokens = {n_tokens} but {cache_dir} holds {cache.n_tokens} tokens")
    dtype = np.float16 if cache.dtype == "fp16" else np.float32
    arr = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n_tokens, cache.d))
    x = next(cache.batches(n_tokens))  # the first n_tokens in stored order
    arr[:] = x.float().numpy() if dtype == np.float32 else x.numpy()
    arr.flush()
    return arr, cache.d


@torch.no_grad()
def score(weights_file: Path, x_eval: torch.Tensor) -> dict:
    """MSE, L0 and explained variance on the held-out tokens by the library's one implementation
    (saelab.eval.metrics.ReconSums, docs/metrics.md), whatever trainer wrote the weights."""
    from safetensors.torch import load_file

    w = load_file(str(weights_file))
    sums = ReconSums()
    for x in x_eval.split(8192):
        x = x.float()
        f = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        sums.add(x, f @ w["W_dec"] + w["b_dec"], f)
    r = sums.result()
    return {
        "mse": r["mse"],
        "l0": r["l0"],
        "explained_variance": r["explained_variance"],
        "dec_row_norm_mean": w["W_dec"].norm(dim=-1).mean().item(),
    }


def summarise(results: dict) -> dict:
    """Per trainer: median tokens/s and saelab's speed-up over it; per run: saelab's MSE at the run's L0.

    saelab's MSE at another run's L0 is read off saelab's own frontier (its runs over the l1
    values, interpolated linearly in log L0); None where that L0 lies outside saelab's range.
    """
    by = {}
    for r in results.values():
        by.setdefault(r["trainer"], []).append(r)
    ours = sorted(by.get("saelab", []), key=lambda r: r["l0"])
    for r in results.values():
        r["saelab_mse_at_same_l0"] = None
        if len(ours) >= 2 and ours[0]["l0"] <= r["l0"] <= ours[-1]["l0"] and r["l0"] > 0:
            logs = np.log([o["l0"] for o in ours])
            r["saelab_mse_at_same_l0"] = float(np.interp(np.log(r["l0"]), logs, [o["mse"] for o in ours]))
    ref = float(np.median([r["tokens_per_s"] for r in by["saelab"]])) if "saelab" in by else None
    return {
        name: {
            "tokens_per_s": float(np.median([r["tokens_per_s"] for r in rs])),
            "saelab_speedup": ref / float(np.median([r["tokens_per_s"] for r in rs])) if ref else float("nan"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        for name, rs in by.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path("data/activations"))
    p.add_argument(
        "--saelens-python",
        type=Path,
        default=Path(".venv-saelens/bin/python"),
        help="python of a virtual environment with sae-lens (skipped with a note when absent)",
    )
    p.add_argument("--n-tokens", type=int, default=307_200)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument(
        "--l1",
        type=float,
        nargs="+",
        default=[1.0],
        help="per-token L1 coefficient(s) (saelab's convention); several give each trainer an MSE-L0 frontier",
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99))
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the clock")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--compile", action="store_true", help="saelab with sae.compile: true")
    p.add_argument("--device", default="auto")
    p.add_argument("--trainers", nargs="+", default=["saelab", "saelab-parquet", "sae-lens", "reference"])
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    if args.worker:
        WORKERS[args.worker](json.loads(Path(args.out).read_text()))
        return

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    n_steps = args.n_tokens // args.batch_size
    with tempfile.TemporaryDirectory(prefix="saelab-bench-") as tmp:
        tmp = Path(tmp)
        arr, d_in = materialise(args.cache, n_steps * args.batch_size + args.eval_tokens, tmp / "acts.npy")
        train_npy = tmp / "train.npy"
        np.save(train_npy, arr[: n_steps * args.batch_size])
        x_eval = torch.from_numpy(np.array(arr[n_steps * args.batch_size :]))
        del arr
        base = {
            "data": str(train_npy),
            "cache": str(args.cache),
            "d_in": d_in,
            "d_sae": args.d_sae,
            "batch_size": args.batch_size,
            "n_steps": n_steps,
            "warmup": args.warmup,
            "l1_coeff": args.l1,
            "lr": args.lr,
            "betas": list(args.betas),
            "seed": 0,
            "device": device,
            "dtype": args.dtype,
            "compile": args.compile,
        }
        results = {}
        for l1, name in [(l1, name) for l1 in args.l1 for name in args.trainers]:
            key = f"{name}@l1={l1:g}"
            out = tmp / key
            out.mkdir()
            spec = {**base, "l1_coeff": l1, "out": str(out), "source": "parquet" if name == "saelab-parquet" else "npy"}
            (out / "spec.json").write_text(json.dumps(spec))
            if name == "sae-lens":
                if not args.saelens_python.exists():
                    print(f"skipping sae-lens: {args.saelens_python} not found (make benchmark creates it)")
                    continue
                cmd = [str(args.saelens_python), str(HERE / "saelens_worker.py"), str(out / "spec.json")]
            else:
                cmd = [sys.executable, __file__, "--worker", name, "--out", str(out / "spec.json")]
            print(f"== {key}: {n_steps} steps of {args.batch_size} on {device}", flush=True)
            subprocess.run(cmd, check=True, env=worker_env())
            results[key] = {
                "trainer": name,
                "l1_coeff": l1,
                **json.loads((out / "result.json").read_text()),
                **score(out / "sae.safetensors", x_eval),
            }

    summary = summarise(results)
    report = {
        "hardware": hardware(device),
        "device": device,
        "platform": platform.platform(),
        "shape": {"d_in": d_in, "d_sae": args.d_sae, "batch_size": args.batch_size},
        "train_tokens": n_steps * args.batch_size,
        "eval_tokens": args.eval_tokens,
        "warmup_steps": args.warmup,
        "l1_coeffs": args.l1,
        "lr": args.lr,
        "betas": list(args.betas),
        "dtype": args.dtype,
        "compile": args.compile,
        "summary": summary,
        "results": results,
    }
    print(f"{'run':24} {'tok/s':>9} {'MSE':>9} {'L0':>7} {'EV':>6} {'saelab MSE at this L0':>22} {'peak RSS MB':>12}")
    for key, r in results.items():
        at = r.get("saelab_mse_at_same_l0")
        print(
            f"{key:24} {r['tokens_per_s']:9.0f} {r['mse']:9.3f} {r['l0']:7.1f} {r['explained_variance']:6.3f} "
            f"{at if at is not None else float('nan'):22.3f} {r['peak_rss_mb']:12.0f}"
        )
    for name, s in summary.items():
        print(f"{name:16} median tok/s {s['tokens_per_s']:9.0f}   saelab speed-up x{s['saelab_speedup']:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
