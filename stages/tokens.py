"""Stage tokens: tokenize both text splits into rows of n_ctx ids that start with BOS."""

from pathlib import Path

from tokenizers import Tokenizer

from saelab.data.text import read_texts
from saelab.data.tokens import tokenize_texts, write_rows
from saelab.errors import InputError
from saelab.io import atomic_dir, read_json, write_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--lm", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True)
    args = p.parse_args()
    with run_stage("tokens", args) as params:
        n_ctx = params.tokens.n_ctx
        lm_cfg = read_json(args.lm / "config.json")
        if n_ctx > lm_cfg["tl_config"]["n_ctx"]:
            raise InputError(f"tokens.n_ctx: {n_ctx} exceeds the LM's context {lm_cfg['tl_config']['n_ctx']}")
        tokenizer = Tokenizer.from_file(str(args.lm / "tokenizer.json"))
        bos = lm_cfg["bos_token_id"]
        counts = {}
        with atomic_dir(args.out) as tmp:
            for split in ("train", "eval"):
                rows = tokenize_texts(tokenizer, read_texts(args.text / f"{split}.parquet"), n_ctx, bos)
                write_rows(tmp / f"{split}.parquet", rows)
                counts[f"{split}_rows"] = len(rows)
                log.info("%s: %d rows x %d tokens", split, len(rows), n_ctx)
            write_json(tmp / "manifest.json", {"n_ctx": n_ctx, "bos_token_id": bos, **counts})
        write_json(args.metrics, counts)
        write_timing(args.timing, {})
        log.info("tokens -> %s", args.out)


if __name__ == "__main__":
    main()
