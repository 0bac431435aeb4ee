"""Stage analyze: the replication analyses (cluster, cosines, neuron sparsity, kurtosis, null space,
D/E projection, logit lens, top-k ablation, per-token CE, max-activating examples)."""

import time
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from saelab.activations import check_sae_width
from saelab.analysis.run import Inputs, pass_analyses, weight_analyses, write_figures, write_tables
from saelab.io import atomic_dir, read_json, resolve_device, write_json
from saelab.lm import load_lm
from saelab.sae import SAE
from saelab.stage import log, parser, peak_memory, run_stage
from saelab.tokens import read_rows


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "sae", "features", "evaluate_metrics", "out", "plots", "metrics"):
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("analyze", args) as params:
        cfg = params.analysis
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        sae, meta = SAE.load(args.sae, device)
        layer = check_sae_width(sae.d_in, meta["hook"], lm.config["tl_config"], args.sae)
        freq = pq.read_table(args.features / "features.parquet", columns=["frequency"])["frequency"].to_numpy()
        rows = read_rows(args.tokens / "eval.parquet")
        inp = Inputs(lm.model, lm.tokenizer, sae, meta["hook"], layer, freq, read_json(args.evaluate_metrics)["eval_tokens"], rows)
        start = time.perf_counter()
        metrics, cols, extra = weight_analyses(inp, cfg)
        n = min(rows.size, cfg.max_tokens or rows.size)
        with tqdm(total=n, desc="analysis pass", unit="tok", unit_scale=True) as bar:
            pass_metrics, res = pass_analyses(inp, cfg, device, bar.update)
        metrics |= pass_metrics
        with atomic_dir(args.out) as tmp:
            write_tables(tmp, inp, cfg, cols, extra, res)
        with atomic_dir(args.plots) as tmp:
            write_figures(tmp, cols, extra, res, metrics, cfg)
        metrics |= {"analysis_seconds": time.perf_counter() - start, **peak_memory()}
        undefined = sorted(k for k, v in metrics.items() if v != v)  # NaN: e.g. no ultra-low features
        if undefined:
            log.info("undefined on this SAE, left out of the metrics: %s", ", ".join(undefined))
        write_json(args.metrics, {k: v for k, v in metrics.items() if k not in undefined})
        log.info("tables -> %s, figures -> %s, metrics -> %s", args.out, args.plots, args.metrics)


if __name__ == "__main__":
    main()
