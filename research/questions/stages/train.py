"""Questions stage train: one SAE of the question runs, the default recipe with the run's overrides
and training probes (research.questions.probes; their records are written next to the SAE).

    python -m research.questions.stages.train --run holdout --activations ../../data/activations --out models/holdout
    python -m research.questions.stages.train --run orthogonal --activations ../../data/activations \\
        --direction-from models/base --out models/orthogonal
"""

from pathlib import Path

import pyarrow.parquet as pq

from research.questions.experiment import load_question_params, probes_for, rates_after, training_direction
from saelab.data.cache import ActivationCache
from saelab.io import atomic_dir, resolve_device, save_weights
from saelab.registry import build
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage
from saelab.training.trainer import Schedule, Trainer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--run", required=True, help="a key of `runs` in research/questions/params.yaml")
    p.add_argument("--activations", type=Path, required=True, help="the run's activation cache")
    p.add_argument("--direction-from", type=Path, help="probes.orthogonalize: the named run's output directory")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with run_stage("q-train", args, load_question_params) as q:
        cfg = q.sae_config(args.run)
        cache = ActivationCache(args.activations)
        device = resolve_device(cfg.device)
        sae = build(cfg, cache.d).to(device)
        direction = None
        if q.every[args.run].probes.orthogonalize is not None:
            if args.direction_from is None:
                raise SystemExit(f"runs.{args.run}.probes.orthogonalize needs --direction-from <that run's output>")
            ref, _ = SAE.load(args.direction_from)
            ref_cfg = q.sae_config(q.every[args.run].probes.orthogonalize)
            late = Schedule.from_config(ref_cfg).stop * ref_cfg.batch_size  # no resampling after this token
            rates = rates_after(pq.read_table(args.direction_from / "density.parquet"), late)
            direction = training_direction(ref.W_enc.detach(), rates, q.default.evaluate.ultra_low_threshold)
            if direction is None:
                log.warning(
                    "%s: %s has no ultra-low features late in training; trained without the constraint",
                    args.run,
                    args.direction_from,
                )
        probes = probes_for(q, args.run, sae, direction)
        trainer = Trainer(sae, cfg, device, q.default.evaluate.ultra_low_threshold, probes=probes)
        log.info(
            "%s: %s SAE %d -> %d (seed %d) on %d tokens, probes %s",
            args.run,
            cfg.architecture,
            cache.d,
            sae.d_sae,
            cfg.seed,
            cfg.n_tokens,
            [type(p).__name__ for p in probes] or "none",
        )
        trainer.run(lambda skip: cache.batches(cfg.batch_size, skip, seed=cfg.seed))
        with atomic_dir(args.out) as tmp:
            trainer.sae.cpu().save(
                tmp,
                {
                    "hook": cache.manifest["hook"],
                    "run": args.run,
                    "train_params": cfg.model_dump(),
                    "probes": q.every[args.run].probes.model_dump(),
                },
            )
            for probe in probes:
                probe.outputs(tmp)
            if direction is not None:
                save_weights(tmp / "orthogonal_to.safetensors", {"direction": direction.cpu()})


if __name__ == "__main__":
    main()
