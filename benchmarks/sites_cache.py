"""What caching many sites costs: one LM pass for H hooks (stage activations with activations.extra_hooks) against
the same pass for one hook, on an LM of the default shape with ``--layers`` blocks.

python benchmarks/sites_cache.py [--layers 4] [--n-tokens 131072] [--rounds 3] \\
    [--out benchmarks/results/sites_cache_cpu.json]

The LM has random weights (the pass's cost does not depend on them) and the default embedded LM's widths; the
tokens are data/tokens/train.parquet's (run `make repro` or `dvc repro tokens` first). Per configuration it times
``build_caches`` end to end, its LM pass (``compute_seconds``: the forward, the statistics and the copy to the
scratch memmap) apart from the shard writes, and within the pass the LM forwards alone (``lm_s``: the writer's own
``lm_seconds``, the time in ``hooks_activations``, the one call per batch that runs the LM with every hook attached,
synchronised on a GPU), in interleaved rounds, and
reports medians and the ratio of each H's pass and forwards to the one-hook figures at the deepest block (the same
depth of LM) and at block 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from saelab.config import ActivationsConfig, LMConfig  # noqa: E402
from saelab.data.cachebuild import build_caches  # noqa: E402
from saelab.data.lm import build_model, embedded_config, save_lm, tl_config  # noqa: E402
from saelab.data.tokens import read_rows, write_rows  # noqa: E402


def configurations(layers: int) -> dict[str, list[str]]:
    last = layers - 1
    every = [f"blocks.{i}.{s}" for i in range(layers) for s in ("hook_resid_post", "mlp.hook_post")]
    return {
        "1 hook, block 0": ["blocks.0.hook_resid_post"],
        f"1 hook, block {last}": [f"blocks.{last}.hook_resid_post"],
        "4 hooks": [f"blocks.{i}.hook_resid_post" for i in range(layers)][:4],
        "8 hooks": every[:8],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--n-tokens", type=int, default=131_072)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--lm", type=Path, default=Path("models/lm"), help="its tokenizer only")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    from tokenizers import Tokenizer

    configs = configurations(args.layers)
    work = Path(tempfile.mkdtemp(prefix="sites-cache-"))
    try:
        lm_cfg = LMConfig(n_layers=args.layers)
        tok = Tokenizer.from_file(str(args.lm / "tokenizer.json"))
        torch.manual_seed(0)
        (work / "lm").mkdir()
        save_lm(work / "lm", build_model(tl_config(lm_cfg)), tok, embedded_config(lm_cfg, tok))
        (work / "tokens").mkdir()
        write_rows(work / "tokens" / "train.parquet", read_rows(args.tokens / "train.parquet"))
        acts = ActivationsConfig(n_tokens=args.n_tokens)
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for r in range(args.rounds):
            for name, hooks in configs.items():  # interleaved: each round visits every configuration
                outs = [work / "out" / h for h in hooks]
                t0 = time.perf_counter()
                manifests, timing = build_caches(acts, hooks, work / "lm", work / "tokens", outs)
                total, lm_s = time.perf_counter() - t0, timing["lm_seconds"]
                runs[name].append({"lm_s": lm_s, "pass_s": timing["compute_seconds"], "total_s": total})
                print(f"round {r} {name}: LM forwards {lm_s:.2f} s, pass {timing['compute_seconds']:.2f} s, "
                      f"total {total:.2f} s", flush=True)  # fmt: skip
                shutil.rmtree(work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ("lm_s", "pass_s", "total_s")
    med = {n: {k: statistics.median(x[k] for x in rs) for k in keys} for n, rs in runs.items()}
    deep, shallow = med[f"1 hook, block {args.layers - 1}"], med["1 hook, block 0"]
    table = [{"configuration": n, "hooks": configs[n], **m,
              "lm_vs_one_deepest": m["lm_s"] / deep["lm_s"], "pass_vs_one_deepest": m["pass_s"] / deep["pass_s"],
              "pass_vs_one_block0": m["pass_s"] / shallow["pass_s"]} for n, m in med.items()]  # fmt: skip
    report = {
        "hardware": f"{cpu_model()}, {torch.get_num_threads()} torch threads",
        "command": "python benchmarks/sites_cache.py " + " ".join(sys.argv[1:]),
        "lm": {"n_layers": args.layers, "d_model": lm_cfg.d_model, "d_mlp": lm_cfg.d_mlp, "weights": "random"},
        "n_tokens": manifests[0]["n_tokens"],
        "rounds": args.rounds,
        "goal": "caching H sites <= 1.3x the LM time of caching one (issue 26)",
        "columns": {
            "lm_s": "the LM forwards alone (hooks_activations: the pass with every hook attached, stopped once every "
            "hook has fired)",
            "pass_s": "the whole LM pass (compute_seconds): the forwards, each site's statistics and its copy to "
            "the scratch memmap",
            "total_s": "build_caches end to end (the pass, the shard writes, loading the LM and tokens)",
        },
        "results": table,
        "runs": runs,
    }
    for row in table:
        print(f"{row['configuration']:>18}: LM forwards {row['lm_s']:.2f} s ({row['lm_vs_one_deepest']:.2f}x), "
              f"pass {row['pass_s']:.2f} s ({row['pass_vs_one_deepest']:.2f}x one hook "
              f"at the deepest block, {row['pass_vs_one_block0']:.2f}x at block 0), "
              f"total {row['total_s']:.2f} s")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
