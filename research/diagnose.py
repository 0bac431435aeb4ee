"""Why mean ablation scores worse than zero ablation on the embedded LM: one measurement.

Mean ablation replaces the activation at the hook by its mean over the SAE's domain
(docs/metrics.md, "Mean ablation"). On the embedded LM its CE is worse than zero
ablation and worse than the unigram baseline. This module measures, on a seeded sample
of eval rows, the candidate causes side by side:

1. BOS: the mean with and without BOS tokens (and the splice at BOS or not);
2. the final LayerNorm: the same ablations with ``ln_final``'s scale frozen to the clean
   run's per-token scale, so the spliced constant can no longer change the normalisation;
3. size: the norm of the MLP output under mean ablation against the clean residual.

CLI (writes findings/mean_ablation.json, cited by docs/results.md)::

    python -m research.diagnose --lm models/lm --tokens data/tokens --activations data/activations \\
        --out findings/mean_ablation.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from saelab.data.cache import ActivationCache
from saelab.data.hooks import covered_positions, grab_into, splice
from saelab.data.lm import excluded_token, load_lm
from saelab.data.tokens import read_rows, sample_rows
from saelab.eval.evaluate import token_ce
from saelab.io import write_json

LN_SCALE, LN_IN = "ln_final.hook_scale", "ln_final.hook_in"


@torch.no_grad()
def mean_ablation_study(
    model,
    rows: np.ndarray,
    hook: str,
    mean_covered: torch.Tensor,
    mean_all: torch.Tensor,
    exclude_token: int | None,
    batch_rows: int = 64,
) -> dict:
    """Mean per-token CE (nats) of each variant over every predicted token of ``rows``, and norms."""
    mlp_out = f"blocks.{hook.split('.')[1]}.hook_mlp_out"
    sums: dict[str, float] = {}
    norms = {"clean_resid": 0.0, "clean_mlp_out": 0.0, "mean_ablated_mlp_out": 0.0, "scale_ratio": 0.0}
    n_pred = n_pos = 0
    for i in range(0, len(rows), batch_rows):
        tokens = torch.from_numpy(rows[i : i + batch_rows].astype(np.int64))
        cov, everywhere = covered_positions(tokens, exclude_token), torch.ones(tokens.shape, dtype=torch.bool)
        st: dict = {}
        logits = model.run_with_hooks(
            tokens, fwd_hooks=[(h, grab_into(st, h)) for h in (hook, LN_SCALE, LN_IN, mlp_out)]
        )
        x, scale = st[hook], st[LN_SCALE]
        zeros, mu, mu_all = torch.zeros_like(x), mean_covered.expand_as(x), mean_all.expand_as(x)
        variants = {
            "zero": [(hook, splice(zeros, ~cov))],
            "mean": [(hook, splice(mu, ~cov))],
            "mean_all_tokens_everywhere": [(hook, splice(mu_all, ~everywhere))],
            "zero_frozen_ln_scale": [(hook, splice(zeros, ~cov)), (LN_SCALE, splice(scale))],
            "mean_frozen_ln_scale": [(hook, splice(mu, ~cov)), (LN_SCALE, splice(scale))],
        }
        ce = {"clean": token_ce(logits, tokens)}
        for name, hooks in variants.items():
            if name == "mean":
                hooks = hooks + [(mlp_out, grab_into(st, "ablated")), (LN_SCALE, grab_into(st, "ablated_scale"))]
            ce[name] = token_ce(model.run_with_hooks(tokens, fwd_hooks=hooks), tokens)
        for name, c in ce.items():
            sums[name] = sums.get(name, 0.0) + c.double().sum().item()
        norms["clean_resid"] += st[LN_IN].norm(dim=-1).double().sum().item()
        norms["clean_mlp_out"] += st[mlp_out].norm(dim=-1).double().sum().item()
        norms["mean_ablated_mlp_out"] += st["ablated"].norm(dim=-1).double().sum().item()
        norms["scale_ratio"] += (st["ablated_scale"] / scale).double().sum().item()
        n_pred += ce["clean"].numel()
        n_pos += tokens.numel()
    out = {f"ce_{k}": v / n_pred for k, v in sums.items()}
    out |= {
        f"mean_norm_{k}" if k != "scale_ratio" else "ln_final_scale_ratio_mean_vs_clean": v / n_pos
        for k, v in norms.items()
    }
    return out | {"ce_tokens": n_pred}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("lm", "tokens", "activations", "out"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--max-tokens", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0, help="eval sample seed (evaluate.seed)")
    args = p.parse_args(argv)
    lm = load_lm(args.lm)
    cache = ActivationCache(args.activations)
    man = cache.manifest
    mean_cov = cache.mean
    n_ex = man.get("n_excluded", 0)
    mean_all = (
        mean_cov
        if not n_ex
        else (mean_cov * man["n_tokens"] + torch.tensor(man["mean_excluded"]) * n_ex) / (man["n_tokens"] + n_ex)
    )
    rows = read_rows(args.tokens / "eval.parquet")
    rows = rows[sample_rows(len(rows), rows.shape[1], args.max_tokens, args.seed)]
    res = mean_ablation_study(lm.model, rows, man["hook"], mean_cov, mean_all, excluded_token(lm, man["bos"]))
    res |= {
        "bos": man["bos"],
        "hook": man["hook"],
        "mean_norm_covered": float(mean_cov.norm()),
        "mean_norm_all_tokens": float(mean_all.norm()),
        "definitions": "docs/metrics.md#mean-ablation",
    }
    write_json(args.out, res)
    for k, v in sorted(res.items()):
        print(f"{k:45s} {v}")


if __name__ == "__main__":
    main()
