"""Build an activation cache from the LM and the train token rows (stage activations, and the
questions pipeline's caches of other hooks)."""

from __future__ import annotations

from pathlib import Path

from saelab.data import cache as acts
from saelab.config import ActivationsConfig
from saelab.data.hooks import check_hook
from saelab.io import atomic_dir, resolve_device, sha256_dir, write_json
from saelab.data.lm import excluded_token, load_lm
from saelab.data.tokens import read_rows, sample_rows


def build_cache(cfg: ActivationsConfig, lm_dir: Path, tokens_dir: Path, out: Path) -> tuple[dict, dict, int]:
    """Cache ``cfg.hook`` on seeded random train rows into ``out`` (atomically).
    Returns (manifest, timing, d)."""
    device = resolve_device(cfg.device)
    lm = load_lm(lm_dir, device)
    layer, d = check_hook(cfg.hook, lm.config["tl_config"])
    rows = read_rows(tokens_dir / "train.parquet")
    row_ids = sample_rows(len(rows), rows.shape[1], cfg.n_tokens, cfg.seed)
    spec = acts.CacheSpec(cfg.hook, layer, d, cfg.dtype, cfg.n_tokens, cfg.seed, cfg.batch_rows,
                          cfg.shard_tokens, cfg.row_group_tokens, cfg.allow_nonfinite, excluded_token(lm, cfg.bos))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        manifest = acts.write_cache(lm.model, rows[row_ids], row_ids, spec, tmp, device)
        manifest["bos"] = cfg.bos
        manifest["inputs"] = {"lm_sha256": sha256_dir(lm_dir), "tokens_sha256": sha256_dir(tokens_dir)}
        timing = {k: manifest.pop(k) for k in ("compute_seconds", "tokens_per_s")}
        write_json(tmp / acts.MANIFEST, manifest)
    return manifest, timing, d
