"""Stage text: collect documents and split them into train / eval Parquet files."""

from pathlib import Path

from saelab.data import text
from saelab.io import atomic_dir, write_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True)
    args = p.parse_args()
    with run_stage("text", args) as params:
        cfg = params.text
        train, held = text.split_docs(text.open_source(cfg), cfg.eval_fraction)
        with atomic_dir(args.out) as tmp:
            text.write_docs(tmp / "train.parquet", train)
            text.write_docs(tmp / "eval.parquet", held)
            counts = {
                "n_train_docs": len(train),
                "n_eval_docs": len(held),
                "train_chars": sum(len(d.text) for d in train),
                "eval_chars": sum(len(d.text) for d in held),
            }
            write_json(tmp / "manifest.json", {"source": cfg.source, **counts})
        write_json(args.metrics, counts)
        write_timing(args.timing, {})
        log.info("%d train / %d eval documents -> %s", len(train), len(held), args.out)


if __name__ == "__main__":
    main()
