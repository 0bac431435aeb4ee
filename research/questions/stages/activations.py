"""Questions stage activations: the default activation cache's recipe on another hook (question 7).

python -m research.questions.stages.activations --hook blocks.0.hook_mlp_out --lm ../../models/lm \\
    --tokens ../../data/tokens --out data/blocks.0.hook_mlp_out
"""

from pathlib import Path

from research.questions.experiment import load_question_params
from saelab.data.cachebuild import build_cache
from saelab.stage import log, parser, run_stage


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--hook", required=True)
    for name in ("lm", "tokens", "out"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    with run_stage("q-activations", args, load_question_params) as q:
        cfg = q.default.activations.model_copy(update={"hook": args.hook})
        manifest, timing, d = build_cache(cfg, args.lm, args.tokens, args.out)
        log.info(
            "%d tokens x %d of %s in %.0f s -> %s",
            manifest["n_tokens"],
            d,
            args.hook,
            timing["compute_seconds"],
            args.out,
        )


if __name__ == "__main__":
    main()
