"""Stage activations: run the LM over train tokens and cache the hook's activations as shuffled Parquet."""

from pathlib import Path

from saelab import cache as acts
from saelab.hooks import check_hook
from saelab.io import atomic_dir, resolve_device, sha256_dir, write_json
from saelab.lm import excluded_token, load_lm
from saelab.stage import log, parser, run_stage, write_timing
from saelab.tokens import read_rows, sample_rows


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "out", "metrics", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("activations", args) as params:
        cfg = params.activations
        device = resolve_device(cfg.device)
        lm = load_lm(args.lm, device)
        layer, d = check_hook(cfg.hook, lm.config["tl_config"])
        rows = read_rows(args.tokens / "train.parquet")
        row_ids = sample_rows(len(rows), rows.shape[1], cfg.n_tokens, cfg.seed)
        spec = acts.CacheSpec(cfg.hook, layer, d, cfg.dtype, cfg.n_tokens, cfg.seed, cfg.batch_rows,
                              cfg.shard_tokens, cfg.row_group_tokens, cfg.allow_nonfinite, excluded_token(lm, cfg.bos))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(args.out) as tmp:
            manifest = acts.write_cache(lm.model, rows[row_ids], row_ids, spec, tmp, device)
            manifest["bos"] = cfg.bos
            manifest["inputs"] = {"lm_sha256": sha256_dir(args.lm), "tokens_sha256": sha256_dir(args.tokens)}
            timing = {k: manifest.pop(k) for k in ("compute_seconds", "tokens_per_s")}
            write_json(tmp / acts.MANIFEST, manifest)
        write_json(args.metrics, {"n_tokens": manifest["n_tokens"], "n_excluded": manifest["n_excluded"], "d": d,
                                  "bos": cfg.bos, "mean_norm": manifest["mean_norm"], "nonfinite": manifest["nonfinite"]})
        write_timing(args.timing, timing)
        log.info("%d tokens x %d (%s, BOS %sd) -> %s", manifest["n_tokens"], d, cfg.dtype, cfg.bos, args.out)


if __name__ == "__main__":
    main()
