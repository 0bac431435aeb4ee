"""Stage activations: run the LM over train tokens and cache the hook's activations as shuffled Parquet."""

from pathlib import Path

from saelab.data.cachebuild import build_cache
from saelab.io import write_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "out", "metrics", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("activations", args) as params:
        cfg = params.activations
        manifest, timing, d = build_cache(cfg, args.lm, args.tokens, args.out)
        write_json(
            args.metrics,
            {
                "n_tokens": manifest["n_tokens"],
                "n_excluded": manifest["n_excluded"],
                "d": d,
                "bos": cfg.bos,
                "mean_norm": manifest["mean_norm"],
                "nonfinite": manifest["nonfinite"],
            },
        )
        write_timing(args.timing, timing)
        log.info("%d tokens x %d (%s, BOS %sd) -> %s", manifest["n_tokens"], d, cfg.dtype, cfg.bos, args.out)


if __name__ == "__main__":
    main()
