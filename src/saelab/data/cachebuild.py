"""Build an activation cache from the LM and the train token rows (stage activations, and the
questions pipeline's caches of other hooks)."""

from __future__ import annotations

from contextlib import ExitStack
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
    manifests, timing = build_caches(cfg, [cfg.hook], lm_dir, tokens_dir, [out])
    return manifests[0], timing, manifests[0]["d"]


def build_caches(cfg: ActivationsConfig, hooks: list[str], lm_dir: Path, tokens_dir: Path,
                 outs: list[Path]) -> tuple[list[dict], dict]:  # fmt: skip
    """Cache every hook of ``hooks`` into its ``outs`` entry from one LM pass over the seeded random train rows
    (``cfg``'s recipe, its ``hook`` aside): each cache is byte-identical to the one ``build_cache`` would write for
    that hook alone. Every hook is checked against the LM before the pass; each output appears complete or not at
    all. Returns (manifests, timing of the shared pass)."""
    device = resolve_device(cfg.device)
    lm = load_lm(lm_dir, device)
    sites = [(hook, *check_hook(hook, lm.config["tl_config"])) for hook in hooks]
    rows = read_rows(tokens_dir / "train.parquet")
    row_ids = sample_rows(len(rows), rows.shape[1], cfg.n_tokens, cfg.seed)
    specs = [acts.CacheSpec(hook, layer, d, cfg.dtype, cfg.n_tokens, cfg.seed, cfg.batch_rows, cfg.shard_tokens,
                            cfg.row_group_tokens, cfg.allow_nonfinite, excluded_token(lm, cfg.bos))
             for hook, layer, d in sites]  # fmt: skip
    inputs = {"lm_sha256": sha256_dir(lm_dir), "tokens_sha256": sha256_dir(tokens_dir)}
    with ExitStack() as stack:
        tmps = []
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmps.append(stack.enter_context(atomic_dir(out)))
        manifests = acts.write_caches(lm.model, rows[row_ids], row_ids, specs, tmps, device)
        for tmp, manifest in zip(tmps, manifests):
            manifest["bos"] = cfg.bos
            manifest["inputs"] = inputs
            timing = {k: manifest.pop(k) for k in ("compute_seconds", "lm_seconds", "tokens_per_s")}
            write_json(tmp / acts.MANIFEST, manifest)
    return manifests, timing
