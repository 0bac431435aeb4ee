"""Every block's transcoder spliced at once, beside every block's SAE at the same targets: the splice stage's code
(saelab.eval.sites.evaluate_sites; docs/metrics.md, "Splicing every site") on a workspace where both were trained
(benchmarks/results/transcoders_cpu says how), one set of members at a time.

    python benchmarks/splice_members.py --workspace <ws> [--params <its params>] \
        --out benchmarks/results/splice_transcoders_cpu
    # as committed: --params benchmarks/results/transcoders_cpu/params.json (the workspace's params, kept there)

Sets: ``saes``, the SAE at each target of the workspace's ``activations.transcoders``
(``models/sites/<target>/seed-N``), and ``transcoders``, the transcoder of each pair
(``models/transcoders/<target>/seed-N``), on evaluate's CE rows under the workspace's ``evaluate`` params. Before
a number is written, each member alone must cost exactly what the workspace's evaluate stage measured for it
(``metrics/sites|transcoders/<target>/evaluate_detail.json``, ce_sae - ce_clean, to 1e-5 nats): the models read
are the ones the committed tables describe.

Output: ``splice-saes.json``, ``splice-transcoders.json`` (evaluate_sites' metrics) and ``splice.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from functional import json_safe  # noqa: E402
from reader import cpu_model  # noqa: E402

import saelab.saes  # noqa: E402, F401  (registers the built-in architectures)
from saelab import threads  # noqa: E402
from saelab.config import load_params  # noqa: E402
from saelab.data.lm import excluded_token, load_lm  # noqa: E402
from saelab.data.tokens import read_rows  # noqa: E402
from saelab.eval.sites import evaluate_sites, member_name  # noqa: E402
from saelab.saes.base import SAE  # noqa: E402

TOLERANCE = 1e-5  # nats: a member alone against the workspace's evaluate stage


def members(ws: Path, pairs: dict[str, str], seed: int) -> dict[str, dict[str, tuple[Path, Path]]]:
    """Set -> member -> (its model folder, the evaluate stage's detail file for it)."""
    return {
        "saes": {t: (ws / "models/sites" / t / f"seed-{seed}", ws / "metrics/sites" / t) for t in pairs},
        "transcoders": {
            member_name(s, t): (ws / "models/transcoders" / t / f"seed-{seed}", ws / "metrics/transcoders" / t)
            for t, s in pairs.items()
        },
    }


def mismatches(metrics: dict, details: dict[str, dict]) -> list[str]:
    """Members whose CE increase alone differs from the evaluate stage's ce_sae - ce_clean by more than TOLERANCE."""
    return [
        f"{m}: {row['ce_increase_alone']:+.6f} here, {details[m]['ce_sae'] - details[m]['ce_clean']:+.6f} in evaluate"
        for m, row in metrics["per_site"].items()
        if abs(row["ce_increase_alone"] - (details[m]["ce_sae"] - details[m]["ce_clean"])) > TOLERANCE
    ]


def render(reports: dict[str, dict], header: str) -> str:
    short = lambda m: m.split("->")[-1].removeprefix("blocks.").split(".")[0]  # noqa: E731 - the block
    f = lambda v, s="+.4f": "—" if v is None else format(v, s)  # noqa: E731
    lines = [header, "", "| set | CE + all | Σ CE + alone | additivity | CE recovered all | argmax changed all |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in reports.items():
        a = m["all"]
        cells = [f"{a['ce_increase']:+.4f}", f"{a['sum_of_alone_increases']:+.4f}", f(a["additivity"], ".3f"),
                 f"{a['ce_recovered_zero']:.4f}", f"{a['argmax_changed']:.4f}"]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per block (CE + alone / marginal, last added to the others / relative error on clean inputs / "
              "relative error it causes at each later target, that target's own member off):", "",
              "| set | block | CE + alone | marginal | relative error | propagated to later blocks |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in reports.items():
        for member, row in m["per_site"].items():
            prop = ", ".join(f"{short(t)}: {v:.4f}" for t, v in row["propagated_relative_error"].items())
            cells = [short(member), f"{row['ce_increase_alone']:+.4f}", f(row.get("marginal_ce_increase")),
                     f"{row['relative_error']:.4f}", prop or "—"]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, required=True)
    p.add_argument("--params", type=Path, help="the params the workspace's models were made with (default: its own)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/splice_transcoders_cpu"))
    args = p.parse_args()
    threads.configure()
    ws = args.workspace
    params = load_params(args.params or ws / "params.yaml")
    pairs = dict(params.activations.transcoders)
    if not pairs:
        sys.exit(f"{ws}/params.yaml has no activations.transcoders: nothing to splice")
    seed = params.seeds[0]  # the seed evaluate_site / evaluate_transcoder scored: the check below needs it
    sets = members(ws, pairs, seed)
    missing = [str(path) for group in sets.values() for path, _ in group.values() if not path.exists()]
    if missing:
        sys.exit(f"missing in the workspace (run its train_site / train_transcoder stages): {', '.join(missing)}")
    lm = load_lm(ws / "models/lm", torch.device("cpu"))
    rows = read_rows(ws / "data/tokens/eval.parquet")
    exclude = excluded_token(lm, params.activations.bos)
    reports, seconds = {}, {}
    for name, group in sets.items():
        saes = {m: SAE.load(path)[0].eval() for m, (path, _) in group.items()}
        start = time.perf_counter()
        metrics, _ = evaluate_sites(lm.model, saes, rows, params.evaluate, "cpu", exclude)
        seconds[name] = time.perf_counter() - start
        details = {m: json.loads((folder / "evaluate_detail.json").read_text()) for m, (_, folder) in group.items()}
        if bad := mismatches(metrics, details):
            sys.exit("not the models the workspace's evaluate stage scored: " + "; ".join(bad))
        reports[name] = metrics
    args.out.mkdir(parents=True, exist_ok=True)
    for name, m in reports.items():
        (args.out / f"splice-{name}.json").write_text(json.dumps(json_safe(m), indent=1) + "\n")
    lm_ce = json.loads((ws / "metrics/lm.json").read_text())["eval_ce"]
    header = (
        f"# Every block's transcoder spliced at once, beside the SAEs at the same targets\n\n"
        f"Hardware: {cpu_model()}, {torch.get_num_threads()} torch threads. Command: `python benchmarks/"
        f"splice_members.py {' '.join(sys.argv[1:])}` on the workspace of benchmarks/results/transcoders_cpu "
        f"(LM eval CE {lm_ce:.4f}, {params.lm.n_layers} layers; seed {seed}). "
        f"{reports['saes']['ce_eval_tokens']:,} CE tokens (evaluate's CE rows), clean CE "
        f"{reports['saes']['ce_clean']:.4f}; seconds per set: "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + ". Each member alone matched the workspace's evaluate stage to 1e-5 nats. Definitions: docs/metrics.md, "
        '"Splicing every site" (a transcoder reads its input as the spliced pass computes it).'
    )
    (args.out / "splice.md").write_text(render(reports, header))
    print((args.out / "splice.md").read_text())


if __name__ == "__main__":
    main()
