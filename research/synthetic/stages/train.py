"""Synthetic stage train: one SAE of the run matrix on its world's cache, with the ordinary trainer.

python -m research.synthetic.stages.train --run standard-topk-8 --data data/standard --out models/standard-topk-8
"""

from pathlib import Path

from research.synthetic.worlds import load_synth_params
from saelab.data.cache import ActivationCache
from saelab.io import atomic_dir, resolve_device
from saelab.registry import build
from saelab.stage import log, parser, run_stage
from saelab.training.trainer import Trainer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--run", required=True, help="a key of `runs` in the params file")
    p.add_argument("--data", type=Path, required=True, help="the run's world (generate's output)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with run_stage("synth-train", args, load_synth_params) as params:
        cfg = params.sae_config(args.run)
        cache = ActivationCache(args.data)
        device = resolve_device(cfg.device)
        trainer = Trainer(build(cfg, cache.d).to(device), cfg, device)
        log.info(
            "%s: %s SAE %d -> %d on %d tokens", args.run, cfg.architecture, cache.d, trainer.sae.d_sae, cfg.n_tokens
        )
        trainer.run(lambda skip: cache.batches(cfg.batch_size, skip, seed=cfg.seed))
        with atomic_dir(args.out) as tmp:
            trainer.sae.cpu().save(
                tmp,
                {
                    "hook": "synthetic",
                    "run": args.run,
                    "world": params.runs[args.run].world,
                    "train_params": cfg.model_dump(),
                },
            )


if __name__ == "__main__":
    main()
