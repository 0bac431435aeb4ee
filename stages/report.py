"""Stage report: feature-density histogram and training curves (PNG to reports/figures, CSV to plots/)."""

from pathlib import Path

import pyarrow.parquet as pq

from saelab.analysis import report
from saelab.io import atomic_dir, read_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    for name in ("features", "evaluate_metrics", "live", "out", "figures", "timing"):
        p.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("report", args) as params:
        freq = pq.read_table(args.features / "features.parquet", columns=["frequency"])["frequency"].to_numpy()
        n_tokens = read_json(args.evaluate_metrics)["eval_tokens"]
        with atomic_dir(args.out) as csv_dir, atomic_dir(args.figures) as png_dir:
            report.plot_density(
                png_dir / "density.png",
                csv_dir / "density.csv",
                freq,
                n_tokens,
                params.report.density_bins,
                params.evaluate.ultra_low_threshold,
            )
            report.plot_curves(png_dir / "training_curves.png", args.live, params.sae.batch_size)
        write_timing(args.timing, {})
        log.info("figures -> %s, plot data -> %s", args.figures, args.out)


if __name__ == "__main__":
    main()
