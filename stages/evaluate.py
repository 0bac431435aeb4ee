"""Stage evaluate: CE loss recovered, MSE, explained variance, L0, L2 ratio and feature frequencies on eval tokens."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saelab.data.cache import ActivationCache, check_bos_policy, open_pair
from saelab.data.hooks import check_sae_width
from saelab.data.lm import excluded_token, load_lm
from saelab.data.tokens import read_rows
from saelab.errors import InputError
from saelab.eval.evaluate import HEADLINE, evaluate
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage, write_timing

DEFINITIONS = (
    "docs/metrics.md; eval rows: a seeded sample (evaluate.seed), CE on its first ce_max_tokens; mean ablation "
    "uses the activation cache's mean over the SAE's domain (activations.bos); frac_ultra_low counts dead features too"
)


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "activations", "sae", "out", "metrics", "details", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("evaluate", args) as params:
        cfg = params.evaluate
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        sae, meta = SAE.load(args.sae, device)
        cache = open_pair(args.activations)[1] if sae.transcoder else ActivationCache(args.activations)  # the target
        check_bos_policy(cache, params.activations.bos)
        for hook in (meta["hook"], meta.get("input_hook", meta["hook"])):
            check_sae_width(sae.d_in, hook, lm.config["tl_config"], args.sae)
        if cache.manifest["hook"] != meta["hook"]:  # mean ablation takes the cache's mean: it must be the SAE's site
            raise InputError(
                f"{args.sae} was trained at {meta['hook']} but {args.activations} caches {cache.manifest['hook']}: "
                "pass that site's cache (data/sites/<hook> for an extra hook, data/sites/transcoders/<target> for a "
                "transcoder)"
            )
        rows = read_rows(args.tokens / "eval.parquet")
        metrics, per_feature = evaluate(
            lm.model,
            sae,
            rows,
            meta["hook"],
            cache.mean,
            cfg,
            device,
            excluded_token(lm, params.activations.bos),
            input_hook=meta.get("input_hook"),
        )
        with atomic_dir(args.out) as tmp:
            n = metrics["eval_tokens"]
            pq.write_table(
                pa.table(
                    {
                        "feature": pa.array(range(sae.d_sae), pa.int32()),
                        "fires": pa.array(per_feature["fired"].astype("int64")),
                        "frequency": pa.array(per_feature["fired"] / n),
                        "mean_activation": pa.array(per_feature["act_sum"] / n),
                    }
                ),
                tmp / "features.parquet",
            )
        write_json(args.metrics, {k: metrics[k] for k in HEADLINE}, sort_keys=False)  # headline, fixed order
        write_json(
            args.details,
            {k: v for k, v in metrics.items() if k not in HEADLINE}
            | {"n_features": sae.d_sae, "bos": params.activations.bos, "definitions": DEFINITIONS}
            | ({"transcoder_input": meta["input_hook"]} if sae.transcoder else {}),
        )
        write_timing(args.timing, per_feature["timing"])
        log.info(
            "CE recovered (zero) %.3f, L0 %.1f, EV %.3f -> %s",
            metrics["ce_recovered_zero"],
            metrics["l0"],
            metrics["explained_variance"],
            args.metrics,
        )


if __name__ == "__main__":
    main()
