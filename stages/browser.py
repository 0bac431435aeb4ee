"""Stage browser: the self-contained HTML feature browser, reports/index.html (and browser_site's pages)."""

import os
from pathlib import Path

from saelab.analysis.browser import build
from saelab.io import atomic_write_bytes, read_json
from saelab.stage import log, parser, run_stage, write_timing


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--title", default="saelab feature browser")
    p.add_argument("--analysis", type=Path, required=True)
    p.add_argument("--figures", type=Path, nargs="+", required=True)
    p.add_argument("--metrics", type=Path, nargs="+", required=True)
    p.add_argument("--generations", type=Path, help="stage splice's generations.json (first seed): the continuations")
    p.add_argument("--splice-metrics", type=Path, help="stage splice's metrics (the same seed): argmax changed")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timing", type=Path, required=True, help="where this stage writes its peak memory")
    args = p.parse_args()
    with run_stage("browser", args):
        gens, splice = (read_json(f) if f else None for f in (args.generations, args.splice_metrics))
        page = build(args.analysis, args.figures, {m.stem: read_json(m) for m in args.metrics}, title=args.title,
                     generations=gens, splice=splice,
                     docs=Path(os.path.relpath("docs/metrics.md", args.out.parent)).as_posix())  # fmt: skip
        atomic_write_bytes(args.out, page.encode())
        write_timing(args.timing, {})
        log.info("feature browser (%.1f MB) -> %s", len(page) / 1e6, args.out)


if __name__ == "__main__":
    main()
