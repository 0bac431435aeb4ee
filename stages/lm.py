"""Stage lm: train the embedded tokenizer + 1-layer GELU LM, or fetch a pretrained one."""

from pathlib import Path

import torch

from saelab.data import lm
from saelab.data.text import read_texts
from saelab.data.tokens import tokenize_texts
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
            torch.manual_seed(cfg.seed)
            texts = read_texts(args.text / "train.parquet")
            tokenizer = lm.train_tokenizer(texts, cfg.vocab_size)
            config = lm.embedded_config(cfg, tokenizer)
            bos = config["bos_token_id"]
            train_rows = tokenize_texts(tokenizer, texts, cfg.n_ctx, bos)
            eval_rows = tokenize_texts(tokenizer, read_texts(args.text / "eval.parquet"), cfg.n_ctx, bos)
            log.info(
                "tokenizer: %d tokens; %d train rows of %d", tokenizer.get_vocab_size(), len(train_rows), cfg.n_ctx
            )
            model = lm.build_model(lm.tl_config(cfg))
            metrics = lm.train_lm(model, train_rows, cfg)
            model.eval()
            metrics["eval_ce"] = lm.eval_ce(model, eval_rows[: cfg.eval_rows])
            metrics["unigram_ce"] = lm.unigram_ce(train_rows, eval_rows[: cfg.eval_rows], cfg.vocab_size)
            metrics["eval_tokens"] = int(min(len(eval_rows), cfg.eval_rows) * (cfg.n_ctx - 1))
            log.info("eval CE %.3f nats vs unigram %.3f", metrics["eval_ce"], metrics["unigram_ce"])
        with atomic_dir(args.out) as tmp:
            lm.save_lm(tmp, model, tokenizer, config)
        timing = {k: metrics.pop(k) for k in ("train_seconds", "train_tokens_per_s") if k in metrics}
        write_json(args.metrics, metrics)
        write_timing(args.timing, timing)
        log.info("model -> %s, metrics -> %s", args.out, args.metrics)


if __name__ == "__main__":
    main()
