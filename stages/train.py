"""Stage train: train one SAE of the seed matrix on the cached activations, resumably.

Curves go to DVCLive. Under ``torchrun --nproc_per_node N`` it trains with DDP on N
processes (NCCL on GPUs, gloo on CPU); rank 0 writes every output.
"""

import os
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live

from saelab.config import site_params, transcoder_input
from saelab.data.stream import open_data
from saelab.errors import InputError
from saelab.interop.saelens import export_saelens, saelens_unsupported
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.registry import build
from saelab.stage import log, parser, run_stage, write_timing
from saelab.training.checkpoint import Checkpointer
from saelab.training.trainer import Trainer

LOSS_CONVENTION = (
    "mse = mean_batch sum_dims (x_hat-x)^2; each sparsity term a mean over the batch (docs/metrics.md, Architectures)"
)


def _device(name: str) -> torch.device:
    """Join the process group when launched by torchrun; pick this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and name != "cpu" else "gloo")
        if torch.cuda.is_available() and name != "cpu":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return resolve_device(name)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--seed", type=int, required=True, help="this SAE's seed (one entry of the params' seeds list)")
    p.add_argument("--activations", type=Path, required=True, help="Parquet cache (sae.source: cache)")
    p.add_argument("--hook", help="the site (default activations.hook; one of activations.extra_hooks: train_site)")
    p.add_argument(
        "--transcoder",
        metavar="TARGET",
        help="train the transcoder of activations.transcoders[TARGET] (--activations: its cache pair)",
    )
    p.add_argument("--lm", type=Path, help="LM directory (needed with sae.source: stream)")
    p.add_argument("--tokens", type=Path, help="token rows directory (needed with sae.source: stream)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--live", type=Path, required=True, help="DVCLive directory for the training curves")
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True, help="wall time, throughput and peak memory (timings/)")
    p.add_argument("--checkpoints", type=Path, required=True, help="resume directory; must not be a DVC output")
    p.add_argument("--model-name", default="saelab-embedded", help="LM name recorded in the SAELens export")
    args = p.parse_args()
    with run_stage("train", args) as params:
        cfg = params.sae.model_copy(update={"seed": args.seed})
        device = _device(cfg.device)
        acts = site_params(params.activations, args.hook)
        source = transcoder_input(params.activations, args.transcoder)
        data = open_data(cfg, acts, device, args.activations, args.lm, args.tokens, transcoder=source is not None)
        if source is None and data.hook != acts.hook:
            raise InputError(f"{args.activations} caches {data.hook}, not the site {acts.hook}: pass its own cache "
                             "(data/sites/<hook> for an extra hook; dvc.yaml's train_site does)")  # fmt: skip
        if source is not None and (data.input_hook, data.hook) != (source, args.transcoder):
            raise InputError(f"{args.activations} caches the pair {data.input_hook} -> {data.hook}, not {source} -> "
                             f"{args.transcoder}: pass data/sites/transcoders/<target> (dvc.yaml's train_transcoder "
                             "does)")  # fmt: skip
        sae = build(cfg, data.d).to(device)
        sae.transcoder = source is not None
        trainer = Trainer(
            sae,
            cfg,
            device,
            ultra_low_threshold=params.evaluate.ultra_low_threshold,
            objective=data.objective,
        )
        ckpt = Checkpointer(args.checkpoints, data.fingerprint, cfg.checkpoint_every)
        if (saved := ckpt.load()) is not None:
            trainer.restore(*saved)
        lead = trainer.rank == 0
        log.info(
            "%s SAE %d -> %d (seed %d) on %d %s tokens, %d training tokens on %s x %d (from step %d)",
            cfg.architecture,
            data.d,
            trainer.sae.d_sae,
            cfg.seed,
            data.n_tokens,
            cfg.source,
            cfg.n_tokens,
            device,
            trainer.world,
            trainer.state.step,
        )
        live = Live(str(args.live), save_dvc_exp=False, dvcyaml=None) if lead else None

        def log_row(step, row):
            live.step = step
            for k, v in row.items():
                live.log_metric(k, v)
            live.next_step()

        if lead:
            for step, row in trainer.state.log_rows:  # curve of the interrupted part of the run
                log_row(step, row)
        state = trainer.run(lambda skip: data.batches(cfg.batch_size, skip), log_row, ckpt)
        if not lead:
            dist.barrier()
            return
        live.end()
        with atomic_dir(args.out) as tmp:
            trainer.sae.cpu().save(
                tmp,
                {
                    "hook": data.hook,
                    **({} if source is None else {"input_hook": source}),
                    "activations_dtype": data.dtype,
                    "source": cfg.source,
                    "loss_convention": LOSS_CONVENTION,
                    "train_params": cfg.model_dump(),
                    "world_size": trainer.world,
                },
            )
            if (why := saelens_unsupported(trainer.sae)) is None:
                hooks = (data.hook, None) if source is None else (source, data.hook)
                export_saelens(trainer.sae, tmp / "saelens", hooks[0], args.model_name, data.n_ctx, hooks[1])
            else:
                log.warning("no SAELens export: %s", why)
        ckpt.clear()
        # under a functional loss a step is batch_size // n_ctx prompts, the SAE sees their covered positions
        tokens = state.step * cfg.batch_size if data.objective is None else state.tokens
        write_json(
            args.metrics,
            {
                "train_tokens": tokens,
                "train_steps": state.step,
                "epochs": tokens / data.n_tokens,
                "source": cfg.source,
                **({} if cfg.loss == "mse" else {"loss": cfg.loss}),  # metrics of MSE runs keep their keys
                "architecture": cfg.architecture,
                "resample": trainer.resample_mode,
                "input_scale": state.input_scale,
                "n_resampled": state.n_resampled,
                "n_resample_events": len(state.resample_events),
                "world_size": trainer.world,
            },
        )
        write_timing(args.timing, {"train_seconds": state.seconds, "train_tokens_per_s": tokens / state.seconds})
        if trainer.world > 1:
            dist.barrier()
        log.info("SAE -> %s, curves -> %s, metrics -> %s", args.out, args.live, args.metrics)


if __name__ == "__main__":
    main()
