"""Stage activations: run the LM over train tokens and cache the hook's activations as shuffled Parquet."""

from pathlib import Path

from saelab import activations as acts
from saelab.io import atomic_dir, read_json, resolve_device, sha256_dir, write_json
from saelab.lm import load_lm
from saelab.stage import log, parser, peak_memory, run_stage
from saelab.tokens import read_rows


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--lm", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args = p.parse_args()
    with run_stage("activations", args) as params:
        cfg = params.activations
        layer, d = acts.check_hook(cfg.hook, read_json(args.lm / "config.json")["tl_config"])
        device = resolve_device(cfg.device)
        rows = read_rows(args.tokens / "train.parquet")
        row_ids = acts.select_rows(len(rows), rows.shape[1], cfg.n_tokens, cfg.seed)
        model = load_lm(args.lm, device).model
        spec = acts.CacheSpec(cfg.hook, layer, d, cfg.dtype, cfg.n_tokens, cfg.seed, cfg.batch_rows,
                              cfg.shard_tokens, cfg.row_group_tokens, cfg.allow_nonfinite)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(args.out) as tmp:
            manifest = acts.write_cache(model, rows[row_ids], row_ids, spec, tmp, device)
            manifest["inputs"] = {"lm_sha256": sha256_dir(args.lm), "tokens_sha256": sha256_dir(args.tokens)}
            timing = {k: manifest.pop(k) for k in ("compute_seconds", "tokens_per_s")}
            write_json(tmp / acts.MANIFEST, manifest)
        write_json(args.metrics, {"n_tokens": manifest["n_tokens"], "d": d, "mean_norm": manifest["mean_norm"],
                                  "nonfinite": manifest["nonfinite"], **timing, **peak_memory()})
        log.info("%d tokens x %d (%s) -> %s", manifest["n_tokens"], d, cfg.dtype, args.out)


if __name__ == "__main__":
    main()
