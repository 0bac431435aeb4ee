"""Stage compare: cross-seed feature matching between the SAEs of the seed matrix."""

from pathlib import Path

from saelab.analysis.plots import hist
from saelab.data.hooks import check_sae_width
from saelab.data.lm import excluded_token, load_lm
from saelab.data.tokens import read_rows, sample_rows
from saelab.errors import InputError
from saelab.eval.compare import compare_all, frequencies
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "saes", "figures", "metrics", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("compare", args) as params:
        cfg, ev = params.compare, params.evaluate
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        loaded = {s: SAE.load(args.saes / f"seed-{s}", device) for s in params.seeds}
        hooks = {meta["hook"] for _, meta in loaded.values()}
        if len(hooks) != 1:
            raise InputError(
                f"{args.saes}: the seeds' SAEs read different hooks {sorted(hooks)}; rerun `dvc repro train`"
            )
        hook = hooks.pop()
        check_sae_width(next(iter(loaded.values()))[0].d_in, hook, lm.config["tl_config"], args.saes)
        rows = read_rows(args.tokens / "eval.parquet")
        rows = rows[sample_rows(len(rows), rows.shape[1], cfg.max_tokens, ev.seed)]  # a prefix of evaluate's sample
        freqs, acts = frequencies(
            lm.model,
            [s for s, _ in loaded.values()],
            rows,
            hook,
            cfg.batch_rows,
            device,
            excluded_token(lm, params.activations.bos),
            cfg.n_components,
        )
        saes = {
            seed: {
                "W_enc": sae.W_enc.detach().cpu(),
                "W_dec": sae.W_dec.detach().cpu(),
                "b_dec": sae.b_dec.detach().cpu(),
                "freq": f,
            }
            for (seed, (sae, _)), f in zip(loaded.items(), freqs)
        }
        metrics, best = compare_all(saes, cfg.hungarian_max, ev.ultra_low_threshold, acts)
        with atomic_dir(args.figures) as tmp:
            if best:
                hist(
                    tmp / "best_match_cosine.png",
                    {f"seed {a} -> seed {b}": v for (a, b), v in best.items()},
                    "best-match decoder cosine in the other seed's SAE",
                    "Cross-seed feature matching",
                )
        write_json(
            args.metrics,
            metrics | {"n_seeds": len(saes), "freq_eval_rows": len(rows), "definitions": "docs/metrics.md"},
        )
        write_timing(args.timing, {})
        log.info("%d seeds compared -> %s", len(saes), args.metrics)


if __name__ == "__main__":
    main()
