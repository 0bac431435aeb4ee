"""Stage lm: train the embedded tokenizer + 1-layer GELU LM, or fetch a pretrained one."""

from pathlib import Path

from saelab.data import lm
from saelab.data.text import read_texts
from saelab.io import atomic_dir, write_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--text", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True)
    args = p.parse_args()
    with run_stage("lm", args) as params:
        cfg = params.lm
        if cfg.source == "pretrained":
            model, tokenizer, config = lm.load_pretrained(cfg.name)
            metrics = {"source_pretrained": 1}
        else:
            texts = [read_texts(args.text / f"{split}.parquet") for split in ("train", "eval")]
            model, tokenizer, config, metrics = lm.train_embedded(cfg, *texts)
            log.info("tokenizer: %d tokens; eval CE %.3f nats vs unigram %.3f", tokenizer.get_vocab_size(),
                     metrics["eval_ce"], metrics["unigram_ce"])  # fmt: skip
        with atomic_dir(args.out) as tmp:
            lm.save_lm(tmp, model, tokenizer, config)
        timing = {k: metrics.pop(k) for k in ("train_seconds", "train_tokens_per_s") if k in metrics}
        write_json(args.metrics, metrics)
        write_timing(args.timing, timing)
        log.info("model -> %s, metrics -> %s", args.out, args.metrics)


if __name__ == "__main__":
    main()
