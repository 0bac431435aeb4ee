"""Stage evaluate: CE loss recovered, MSE, explained variance, L0, L2 ratio and feature frequencies on eval tokens."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from saelab.activations import ActivationCache, check_sae_width
from saelab.evaluate import evaluate
from saelab.io import atomic_dir, resolve_device, write_json
from saelab.lm import load_lm
from saelab.sae import SAE
from saelab.stage import log, parser, peak_memory, run_stage
from saelab.tokens import read_rows


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "activations", "sae", "out", "metrics"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("evaluate", args) as params:
        cfg = params.evaluate
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        cache = ActivationCache(args.activations)
        sae, meta = SAE.load(args.sae, device)
        layer = check_sae_width(sae.d_in, meta["hook"], lm.config["tl_config"], args.sae)
        rows = read_rows(args.tokens / "eval.parquet")
        metrics, per_feature = evaluate(lm.model, sae, rows, meta["hook"], layer, cache.mean, cfg, device)
        metrics |= peak_memory()
        metrics["definitions"] = "DESIGN.md#definitions; mean ablation uses the train-cache mean; frac_ultra_low counts dead features too"
        with atomic_dir(args.out) as tmp:
            n = metrics["eval_tokens"]
            pq.write_table(pa.table({
                "feature": pa.array(range(sae.d_sae), pa.int32()),
                "fires": pa.array(per_feature["fired"].astype("int64")),
                "frequency": pa.array(per_feature["fired"] / n),
                "mean_activation": pa.array(per_feature["act_sum"] / n),
            }), tmp / "features.parquet")
        write_json(args.metrics, metrics | {"n_features": sae.d_sae})
        log.info("CE recovered (zero) %.3f, L0 %.1f, EV %.3f -> %s",
                 metrics["ce_recovered_zero"], metrics["l0"], metrics["explained_variance"], args.metrics)


if __name__ == "__main__":
    main()
