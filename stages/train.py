"""Stage train: train the SAE on the cached activations, resumably (curves logged with DVCLive)."""

from pathlib import Path

import torch
from dvclive import Live

from saelab.activations import MANIFEST, ActivationCache
from saelab.checkpoint import Checkpointer, fingerprint
from saelab.interchange import export_saelens
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.sae import SAE
from saelab.stage import log, parser, peak_rss_mb, run_stage
from saelab.train import Trainer

L1_CONVENTION = "loss = mean_batch sum_dims (x_hat-x)^2 + l1_coeff * mean_batch sum_features |f|"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--activations", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--live", type=Path, required=True, help="DVCLive directory for the training curves")
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--checkpoints", type=Path, required=True, help="resume directory; must not be a DVC output")
    p.add_argument("--model-name", default="saelab-embedded", help="LM name recorded in the SAELens export")
    args = p.parse_args()
    with run_stage("train", args) as params:
        cfg = params.sae
        cache = ActivationCache(args.activations)
        device = resolve_device(cfg.device)
        trainer = Trainer(SAE(cache.d, cfg.width(cache.d), seed=cfg.seed).to(device), cfg, device)
        ckpt = Checkpointer(args.checkpoints, fingerprint(cfg.model_dump(), args.activations / MANIFEST), cfg.checkpoint_every)
        if (saved := ckpt.load()) is not None:
            trainer.restore(*saved)
        log.info("SAE %d -> %d on %d cached tokens, %d training tokens on %s (from step %d)",
                 cache.d, trainer.sae.d_sae, cache.n_tokens, cfg.n_tokens, device, trainer.state.step)
        with Live(str(args.live), save_dvc_exp=False, dvcyaml=None) as live:
            def log_row(step, row):
                live.step = step
                for k, v in row.items():
                    live.log_metric(k, v)
                live.next_step()

            for step, row in trainer.state.log_rows:  # curve of the interrupted part of the run
                log_row(step, row)
            state = trainer.run(lambda skip: cache.batches(cfg.batch_size, skip), log_row, ckpt)
        with atomic_dir(args.out) as tmp:
            trainer.sae.cpu().save(tmp, {"hook": cache.manifest["hook"], "activations_dtype": cache.dtype,
                                         "l1_convention": L1_CONVENTION, "train_params": cfg.model_dump()})
            export_saelens(trainer.sae, tmp / "saelens", cache.manifest["hook"], args.model_name, cache.manifest["n_ctx"])
        ckpt.clear()
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
