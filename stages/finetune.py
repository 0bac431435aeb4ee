"""Stage finetune: a short KL fine-tune of the first seed's SAE, evaluated beside it (docs/metrics.md,
"Functional training"). The source SAE is read, never written; the fine-tuned one is an SAE like any other."""

from pathlib import Path

from dvclive import Live

from saelab.data.cache import ActivationCache, check_bos_policy
from saelab.data.hooks import check_sae_width
from saelab.data.lm import excluded_token, load_lm
from saelab.data.stream import open_data
from saelab.data.tokens import read_rows
from saelab.errors import InputError
from saelab.eval.evaluate import HEADLINE, evaluate
from saelab.interop.saelens import export_saelens
from saelab.io import atomic_dir, read_json, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage, write_timing
from saelab.training.checkpoint import Checkpointer, fingerprint
from saelab.training.finetune import finetune_config, finetuned_copy, weights
from saelab.training.trainer import Trainer

CE_KEYS = ("ce_clean", "ce_sae", "ce_zero_ablation")


def main() -> None:
    p = parser(__doc__)
    for name in ("sae", "lm", "tokens", "activations", "out", "live", "metrics", "timing", "checkpoints"):
        p.add_argument(f"--{name}", type=Path, required=True)
    p.add_argument("--model-name", default="saelab-embedded", help="LM name recorded in the SAELens export")
    args = p.parse_args()
    with run_stage("finetune", args) as params:
        ft, device = params.finetune, resolve_device(params.sae.device)
        sae, meta = SAE.load(args.sae, device)
        probe = finetune_config(params.sae.model_copy(update={"seed": params.seeds[0]}), ft, 1.0, 0.0)
        if sae.architecture != params.sae.architecture or sae.arch_params() != params.sae.arch_params():
            raise InputError(
                f"{args.sae} is a {sae.architecture} SAE with {sae.arch_params()}, not the one sae params describe "
                f"({params.sae.architecture}, {params.sae.arch_params()}): rerun `dvc repro train` first"
            )
        trained_norm = meta.get("train_params", {}).get("normalize_activations", "none")
        if trained_norm != params.sae.normalize_activations:  # the source's own record, not only today's params
            raise InputError(
                f"{args.sae} was trained with sae.normalize_activations: {trained_norm}, not the "
                f"{params.sae.normalize_activations} sae params give: rerun `dvc repro train` first"
            )
        if meta["hook"] != params.activations.hook:
            raise InputError(
                f"{args.sae} was trained at {meta['hook']}, not activations.hook ({params.activations.hook}): "
                "rerun `dvc repro train` first"
            )
        # every check on the inputs before the fine-tune, not after it (the LM's config only: its weights load later)
        cache = ActivationCache(args.activations)
        check_bos_policy(cache, params.activations.bos)
        check_sae_width(sae.d_in, meta["hook"], read_json(args.lm / "config.json")["tl_config"], args.sae)
        data = open_data(probe, params.activations, device, args.activations, args.lm, args.tokens)
        first = next(data.batches(probe.batch_size, 0)).to(device)
        w = weights(ft, sae, probe, data.objective, first)  # on the fine-tune copy: warm-ups off, as trained
        cfg = finetune_config(
            params.sae.model_copy(update={"seed": params.seeds[0]}), ft, w["kl_coeff"], w["mse_coeff"]
        )
        data = open_data(cfg, params.activations, device, args.activations, args.lm, args.tokens)
        trainer = Trainer(finetuned_copy(sae, cfg), cfg, device, params.evaluate.ultra_low_threshold,
                          objective=data.objective, from_trained=True)  # fmt: skip
        source = fingerprint({"data": data.fingerprint}, args.sae / "sae.safetensors")  # a new source: start over
        ckpt = Checkpointer(args.checkpoints, source, cfg.checkpoint_every)
        if (saved := ckpt.load()) is not None:
            trainer.restore(*saved)
        log.info("fine-tuning %s on %s for %d tokens, lr %g, KL x %.4g + MSE x %.4g", args.sae, cfg.loss, cfg.n_tokens,
                 cfg.lr, w["kl_coeff"], w["mse_coeff"])  # fmt: skip
        live = Live(str(args.live), save_dvc_exp=False, dvcyaml=None)

        def log_row(step, row):
            live.step = step
            for k, v in row.items():
                live.log_metric(k, v)
            live.next_step()

        for step, row in trainer.state.log_rows:
            log_row(step, row)
        state = trainer.run(lambda skip: data.batches(cfg.batch_size, skip), log_row, ckpt)
        live.end()
        with atomic_dir(args.out) as tmp:
            meta_out = {**meta, "source": cfg.source, "train_params": cfg.model_dump(), "finetuned_from": str(args.sae)}
            trainer.sae.cpu().save(tmp, meta_out)
            export_saelens(trainer.sae, tmp / "saelens", meta["hook"], args.model_name, data.n_ctx)
        ckpt.clear()

        lm = load_lm(args.lm, device)
        rows = read_rows(args.tokens / "eval.parquet")
        exclude = excluded_token(lm, params.activations.bos)
        scored = {}
        for name, s in (("source", SAE.load(args.sae, device)[0]), ("finetuned", trainer.sae.to(device))):
            m, _ = evaluate(lm.model, s, rows, meta["hook"], cache.mean, params.evaluate, device, exclude)
            scored[name] = {k: m[k] for k in (*HEADLINE, *CE_KEYS)}
        gap = {name: m["ce_sae"] - m["ce_clean"] for name, m in scored.items()}
        write_json(
            args.metrics,
            {
                "ce_gap_reduction": 1 - gap["finetuned"] / gap["source"] if gap["source"] > 0 else None,
                "l0_ratio": scored["finetuned"]["l0"] / scored["source"]["l0"] if scored["source"]["l0"] else None,
                "ce_gap_source": gap["source"],
                "ce_gap_finetuned": gap["finetuned"],
                **{f"{name}_{k}": v for name, m in scored.items() for k, v in m.items()},
                "loss": cfg.loss,
                **w,
                "kl_share": ft.kl_share if ft.mse_coeff == "balanced" else None,
                "finetune_tokens": state.tokens,
                "finetune_share_of_train_tokens": state.tokens / params.sae.n_tokens,
                "definitions": "docs/metrics.md, 'Functional training'; ce_gap = ce_sae - ce_clean (nats/token), "
                "reduction = 1 - finetuned gap / source gap, on evaluate's CE tokens",
            },
            sort_keys=False,
        )
        write_timing(
            args.timing, {"finetune_seconds": state.seconds, "finetune_tokens_per_s": state.tokens / state.seconds}
        )
        log.info("CE gap %.4f -> %.4f nats (%s), L0 %.1f -> %.1f -> %s", gap["source"], gap["finetuned"], cfg.loss,
                 scored["source"]["l0"], scored["finetuned"]["l0"], args.metrics)  # fmt: skip


if __name__ == "__main__":
    main()
