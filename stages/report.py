"""Stage report: feature-density histogram and training curves into plots/."""

from pathlib import Path

import pyarrow.parquet as pq

from saelab import report
from saelab.io import atomic_dir, read_json, write_json
from saelab.stage import log, parser, peak_memory, run_stage


def main() -> None:
    p = parser(__doc__)
    for name in ("features", "evaluate_metrics", "live", "out", "metrics"):
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("report", args) as params:
        freq = pq.read_table(args.features / "features.parquet", columns=["frequency"])["frequency"].to_numpy()
        n_tokens = read_json(args.evaluate_metrics)["eval_tokens"]
        with atomic_dir(args.out) as tmp:
            report.plot_density(tmp / "density.png", tmp / "density.csv", freq, n_tokens, params.report.density_bins,
                                params.evaluate.ultra_low_threshold)
            report.plot_curves(tmp / "training_curves.png", args.live, params.sae.batch_size)
        write_json(args.metrics, {"n_features": len(freq)} | peak_memory())
        log.info("figures -> %s", args.out)


if __name__ == "__main__":
    main()
