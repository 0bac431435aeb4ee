"""Stage analyze: the replication analyses (cluster, cosines, neuron sparsity, kurtosis, null space,
D/E projection, logit lens, top-k ablation, per-token CE, max-activating examples)."""

import time
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from saelab.analysis.run import Inputs, pass_analyses, weight_analyses, write_figures, write_tables
from saelab.data.hooks import check_sae_width
from saelab.data.lm import excluded_token, ln_final_weight, load_lm
from saelab.data.tokens import read_rows
from saelab.eval.evaluate import EvalSample
from saelab.io import atomic_dir, read_json, resolve_device, write_json
from saelab.saes.base import SAE
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "sae", "features", "evaluate_metrics", "out", "plots", "figures", "metrics", "timing"):
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("analyze", args) as params:
        cfg, ev = params.analysis, params.evaluate
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        sae, meta = SAE.load(args.sae, device)
        layer = check_sae_width(sae.d_in, meta["hook"], lm.config["tl_config"], args.sae)
        freq = pq.read_table(args.features / "features.parquet", columns=["frequency"])["frequency"].to_numpy()
        rows = read_rows(args.tokens / "eval.parquet")
        inp = Inputs(
            lm.model,
            lm.tokenizer,
            sae,
            meta["hook"],
            layer,
            freq,
            read_json(args.evaluate_metrics)["eval_tokens"],
            rows,
            ln_final_weight(lm),
            ev.ultra_low_threshold,
            ev.dense_threshold,
            excluded_token(lm, params.activations.bos),
        )
        start = time.perf_counter()
        weights, cols, extra = weight_analyses(inp, cfg)
        sample = EvalSample.draw(len(rows), rows.shape[1], cfg.max_tokens, ev)  # CE rows: exactly evaluate's
        with tqdm(total=sample.n_rows * rows.shape[1], desc="analysis pass", unit="tok", unit_scale=True) as bar:
            passed, res = pass_analyses(inp, cfg, sample, device, bar.update)
        metrics = weights.as_dict() | passed.as_dict()
        with atomic_dir(args.out) as tmp:
            write_tables(tmp, inp, cfg, cols, extra, res)
        with atomic_dir(args.plots) as csv_dir, atomic_dir(args.figures) as png_dir:
            write_figures(png_dir, csv_dir, cols, extra, res, metrics, cfg)
        undefined = sorted(k for k, v in metrics.items() if v != v)  # NaN: e.g. no ultra-low features
        if undefined:
            log.info("undefined on this SAE, left out of the metrics: %s", ", ".join(undefined))
        write_json(
            args.metrics, {k: v for k, v in metrics.items() if k not in undefined} | {"definitions": "docs/metrics.md"}
        )
        write_timing(args.timing, {"analysis_seconds": time.perf_counter() - start})
        log.info("tables -> %s, figures -> %s, metrics -> %s", args.out, args.figures, args.metrics)


if __name__ == "__main__":
    main()
