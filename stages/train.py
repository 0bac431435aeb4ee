"""Stage train: train the SAE on the cached activations (curves logged with DVCLive)."""

from pathlib import Path

import torch
from dvclive import Live

from saelab.activations import ActivationCache
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.sae import SAE
from saelab.stage import log, parser, peak_rss_mb, run_stage
from saelab.train import train_sae


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--activations", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--live", type=Path, required=True, help="DVCLive directory for the training curves")
    p.add_argument("--metrics", type=Path, required=True)
    args = p.parse_args()
    with run_stage("train", args) as params:
        cfg = params.sae
        cache = ActivationCache(args.activations)
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        sae = SAE(cache.d, cfg.width(cache.d), seed=cfg.seed).to(device)
        log.info("SAE %d -> %d on %d cached tokens, training %d tokens on %s", cache.d, sae.d_sae, cache.n_tokens, cfg.n_tokens, device)
        with Live(str(args.live), save_dvc_exp=False, dvcyaml=None) as live:
            def log_row(step, row):
                live.step = step
                for k, v in row.items():
                    live.log_metric(k, v)
                live.next_step()

            state = train_sae(sae, cache.batches(cfg.batch_size), cfg, device, log=log_row)
        with atomic_dir(args.out) as tmp:
            sae.cpu().save(tmp, {
                "hook": cache.manifest["hook"],
                "activations_dtype": cache.dtype,
                "l1_convention": "loss = mean_batch sum_dims (x_hat-x)^2 + l1_coeff * mean_batch sum_features |f|",
                "train_params": cfg.model_dump(),
            })
        tokens = state.step * cfg.batch_size
        write_json(args.metrics, {
            "train_tokens": tokens, "train_steps": state.step, "train_seconds": state.seconds,
            "train_tokens_per_s": tokens / state.seconds, "epochs": tokens / cache.n_tokens,
            "n_resampled": state.n_resampled, "n_resample_events": len(state.resample_events),
            "peak_rss_mb": peak_rss_mb(),
        })
        log.info("SAE -> %s, curves -> %s, metrics -> %s", args.out, args.live, args.metrics)


if __name__ == "__main__":
    main()
