"""Stage activations: run the LM over train tokens and cache the hook's activations as shuffled Parquet; with
``activations.extra_hooks`` the same LM pass caches every further site too, one cache each under ``--sites``, and
with ``activations.transcoders`` each transcoder's input and target (``--sites``/transcoders/<target>/)."""

import os
import shutil
from pathlib import Path

from saelab.data.cache import PAIR
from saelab.data.cachebuild import build_caches
from saelab.io import atomic_dir, write_json
from saelab.stage import log, parser, run_stage, write_timing

SITES_INDEX = "sites.json"
TRANSCODERS = "transcoders"  # under --sites: <target>/input and <target>/target, a cache each (saelab.data.cache.PAIR)
SCRATCH = ".scratch"  # under --sites while the stage runs: hooks cached for transcoders only


def _link(src: str, dst: str) -> None:
    """A hard link of ``src`` at ``dst`` (the same bytes without a second copy on disk), or a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> None:
    p = parser(__doc__)
    for name in ("lm", "tokens", "out", "sites", "metrics", "timing"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("activations", args) as params:
        cfg = params.activations
        with atomic_dir(args.sites) as sites:  # the further sites' caches (only the index when there are none)
            place = {hook: sites / hook for hook in cfg.extra_hooks} | {cfg.hook: args.out}
            place |= {hook: sites / SCRATCH / hook for hook in cfg.cached_hooks if hook not in place}
            outs = [place[hook] for hook in cfg.cached_hooks]
            manifests, timing = build_caches(cfg, list(cfg.cached_hooks), args.lm, args.tokens, outs)
            for target, source in cfg.transcoders.items():  # one LM pass: the pair's rows are the same tokens
                for side, hook in zip(PAIR, (source, target)):  # hard links where the filesystem has them
                    shutil.copytree(place[hook], sites / TRANSCODERS / target / side, copy_function=_link)
            shutil.rmtree(sites / SCRATCH, ignore_errors=True)
            index = {"hooks": list(cfg.extra_hooks)}
            write_json(sites / SITES_INDEX, index | ({"transcoders": cfg.transcoders} if cfg.transcoders else {}))
        manifest, d = manifests[0], manifests[0]["d"]
        others, manifests = manifests[len(cfg.hooks) :], manifests[: len(cfg.hooks)]  # hooks for transcoders only
        metrics = {
            "n_tokens": manifest["n_tokens"],
            "n_excluded": manifest["n_excluded"],
            "d": d,
            "bos": cfg.bos,
            "mean_norm": manifest["mean_norm"],
            "nonfinite": manifest["nonfinite"],
        }
        if cfg.extra_hooks:  # one site: the file stays as it was
            metrics["sites"] = {m["hook"]: {k: m[k] for k in ("d", "mean_norm", "nonfinite")} for m in manifests[1:]}
        if others:  # one site, no transcoders: the file stays as it was
            metrics["transcoder_hooks"] = {
                m["hook"]: {k: m[k] for k in ("d", "mean_norm", "nonfinite")} for m in others
            }
        write_json(args.metrics, metrics)
        write_timing(
            args.timing,
            timing
            | ({"n_sites": len(cfg.hooks)} if cfg.extra_hooks else {})
            | ({"n_hooks": len(outs)} if cfg.transcoders else {}),
        )
        log.info("%d tokens x %d (%s, BOS %sd) -> %s; %d further sites -> %s", manifest["n_tokens"], d, cfg.dtype,
                 cfg.bos, args.out, len(cfg.extra_hooks), args.sites)  # fmt: skip


if __name__ == "__main__":
    main()
