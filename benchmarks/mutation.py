"""Mutation testing of the formula modules: can the test suite tell a wrong formula from the right one?

mutmut (pinned in the Makefile) rewrites one operator, constant or argument of a function at a time (a mutant) and
runs the tests that call that function; a mutant is *killed* when a test fails. The report counts, per module:
mutants, killed, survived, equivalent (a survivor that cannot change any result, listed with its reason in
benchmarks/mutation_equivalent.yaml), no tests (no selected test calls the function) and timeouts. The score is
killed / (mutants - equivalent). Mutants in the *critical* functions (losses, custom autograd gradients, folds,
exports; ``CRITICAL`` below) are counted apart: all of them must be killed or accounted for. Definitions and the
goal: docs/contributing.md, "Mutation testing".

    make mutation                                                # every module, report in benchmarks/results/
    python benchmarks/mutation.py --only src/saelab/saes/jumprelu.py --out /tmp/m   # one module, elsewhere

It runs in a copy of the working tree (``--work``), two test processes at once (``--jobs``), torch on one thread
each: slow (about 20 minutes on 2 cores), so it is a command of its own, not part of ``make test``;
tests/test_mutation.py runs a small smoke case.

mutmut 3.8 leaves decorated functions unmutated except ``@staticmethod`` / ``@classmethod``; many formulas here are
``@torch.no_grad()`` methods (the folds among them), so ``--mutmut`` runs mutmut's command line with that decorator
treated as neutral (it is kept on every copy of the function). Functions that still get no mutant are listed in the
report, so a formula never drops out of the count unseen.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT = REPO / "benchmarks" / "mutation_equivalent.yaml"

MODULES = {  # the modules that hold formulas, and what they hold
    "src/saelab/saes/base.py": "SAE interface: MSE and L1 losses, encode / decode, folds, row resampling, export",
    "src/saelab/saes/standard_april.py": "Anthropic April 2024 recipe: weighted L1, its fold and resampling",
    "src/saelab/saes/topk.py": "TopK: the fused encoder autograd Function, AuxK, k annealing, export",
    "src/saelab/saes/batchtopk.py": "BatchTopK: batch-level top-k, inference threshold, AuxK, fold, export",
    "src/saelab/saes/jumprelu.py": "JumpReLU: straight-through threshold gradients, L0 / tanh penalties, folds",
    "src/saelab/saes/free_decoder.py": "free decoder rows: norms, folds, resampling",
    "src/saelab/training/resample.py": "Anthropic resampling: probabilities, new encoder / decoder rows",
    "src/saelab/eval/metrics.py": "reconstruction metrics (MSE, EV, L0, L2 ratio, fire counts), CE recovered",
    "src/saelab/eval/evaluate.py": "CE of the clean, zero-ablated and spliced LM",
    "src/saelab/eval/compare.py": "cross-SAE matching, decoder cosines, ultra-low direction",
    "src/saelab/eval/sites.py": "every site spliced at once: CE sets, additivity, propagation, CE-difference overlap",
    "src/saelab/analysis/weights.py": "replication formulas: D/E, cosines, kurtosis, neuron sparsity, logit lens",
    "src/saelab/interop/saelens.py": "export to SAELens and import of the reference weights",
    "research/synthetic/recovery.py": "synthetic recovery: MCC, Hungarian matching, absorption, shrinkage",
    "research/interpolate.py": "a family's value at a given L0 (log-L0 interpolation: frontier, recovery, questions)",
}

# Functions whose every mutant must be killed (or be equivalent): losses, gradients (custom autograd Functions and
# gradient edits), folds (weights rewritten so that outputs stay the same) and exports.
CRITICAL = re.compile(
    r"(train_forward|_loss|^l0$|dense_aux_acts|sparse_decode|batch_topk|k_at"  # losses and what builds them
    r"|Fn\.(forward|backward)|Encode\.(forward|backward)|^_rect$|remove_parallel_grad_|before_step"  # gradients
    r"|fold_|scale_theta_|finish_training_"  # folds (and BatchTopK's exported threshold)
    r"|JumpReLU\.theta$"  # θ as the losses read it
    r"|saelens)"  # exports
)

TESTS = [
    "tests/test_architectures.py",
    "tests/test_sae.py",
    "tests/test_metrics.py",
    "tests/test_evaluate.py",
    "tests/test_analysis.py",
    "tests/test_compare.py",
    "tests/test_sites.py",
    "tests/test_synthetic.py",
    "tests/test_train.py",
    "tests/test_interchange.py",
    "tests/test_formulas.py",
]
DESELECT = [  # end-to-end runs: each would cost tens of seconds per mutant; the unit tests cover their formulas
    "tests/test_synthetic.py::test_tiny_synthetic_pipeline_runs_with_dvc_repro",
    "tests/test_train.py::test_compiled_step_matches_eager",
]


def neutral_decorators() -> None:
    """Let mutmut mutate functions whose only decorators are ``torch.no_grad()``: its check that skips decorated
    functions sees them without the decorator (which stays on the trampoline and on every mutant)."""
    import libcst as cst
    from mutmut.mutation.file_mutation import MutationVisitor

    def no_grad(d) -> bool:
        return cst.Module([]).code_for_node(d.decorator) == "torch.no_grad()"

    original = MutationVisitor._skip_node_and_children

    def skip(self, node):
        if isinstance(node, cst.FunctionDef) and node.decorators and all(map(no_grad, node.decorators)):
            return original(self, node.with_changes(decorators=[]))
        return original(self, node)

    MutationVisitor._skip_node_and_children = skip


def copy_tree(work: Path) -> None:
    """The working tree's files (tracked, and untracked ones git does not ignore) into ``work``."""
    if work.exists():
        shutil.rmtree(work)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / f.decode()
        if src.is_file():
            (work / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / f.decode())


def write_config(work: Path, modules: list[str], tests: list[str]) -> None:
    lines = ["[mutmut]", "source_paths =", "    src", "    research", "only_mutate ="]
    lines += [f"    {m}" for m in modules]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider"]
    lines += [a for d in DESELECT for a in ("    --deselect", f"    {d}")]
    lines += ["also_copy =", "    benchmarks", "    research", "    docs"]
    # CPU-time limit per mutant: (the tests' clean time + 30 s) x 2 x 2. The constant covers session fixtures (a tiny
    # LM) that a mutant's process builds again but the clean run charged to one test only.
    lines += ["timeout_multiplier = 2.0", "timeout_constant = 30.0"]
    (work / "setup.cfg").write_text("\n".join(lines) + "\n")


def label(mutant: str, module: str) -> str:
    """``saelab.saes.jumprelu.xǁJumpReLUFnǁbackward__mutmut_4`` -> ``JumpReLUFn.backward``."""
    name = mutant[len(dotted(module)) + 1 :].rsplit("__mutmut_", 1)[0]
    return name[2:].replace("ǁ", ".") if name.startswith("xǁ") else name[2:]


def dotted(module: str) -> str:
    return module.removeprefix("src/").removesuffix(".py").replace("/", ".")


def functions(module: Path) -> list[str]:
    """Every function and method of a module, as ``func`` or ``Class.method``."""
    tree = ast.parse(module.read_text())
    out = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    for c in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        out += [f"{c.name}.{n.name}" for n in c.body if isinstance(n, ast.FunctionDef)]
    return out


def mutated_line(diff: str) -> str:
    """The mutant's changed lines, stripped: what identifies it across renumbering."""
    lines = diff.splitlines()
    return " | ".join(
        ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("++") and ln[1:].strip()
    )


def results(work: Path, modules: list[str]) -> list[dict]:
    """One row per mutant: module, function, status, diff (for every mutant that was not killed)."""
    from mutmut.stats import status_by_exit_code  # mutmut's own reading of its exit codes

    rows = []
    for m in modules:
        meta = json.loads((work / "mutants" / f"{m}.meta").read_text())
        for name, code in meta["exit_code_by_key"].items():
            rows.append({"module": m, "name": name, "function": label(name, m), "status": status_by_exit_code[code]})
    todo = [r["name"] for r in rows if r["status"] != "killed"]
    diffs = json.loads(
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--diffs", *todo],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        or "{}"
    )
    for r in rows:
        if r["name"] in diffs:
            r["diff"] = diffs[r["name"]]
            r["mutation"] = mutated_line(r["diff"])
    return rows


def key(e: dict) -> tuple:
    """What identifies a mutant across renumbering: module, function and mutated line."""
    return e["module"], e["function"], e.get("mutation")


def classify(rows: list[dict], equivalent: list[dict]) -> None:
    """Survivors listed in the equivalents file (same module, function and mutated line) become 'equivalent'."""
    known = {key(e): e["reason"] for e in equivalent}
    for r in rows:
        if r["status"] == "survived" and key(r) in known:
            r["status"], r["reason"] = "equivalent", known[key(r)]


def summarise(rows: list[dict], modules: list[str]) -> dict:
    out = {}
    for m in modules:
        for scope, keep in (("all", lambda r: True), ("critical", lambda r: bool(CRITICAL.search(r["function"])))):
            mine = [r for r in rows if r["module"] == m and keep(r)]
            c = Counter(r["status"] for r in mine)
            c["killed"] += c.pop("segfault", 0)  # the mutant crashed the test process: the suite fails, it is caught
            live = len(mine) - c["equivalent"]
            out.setdefault(m, {})[scope] = {
                "mutants": len(mine),
                "killed": c["killed"],
                "survived": c["survived"],
                "equivalent": c["equivalent"],
                "no_tests": c["no tests"],
                "timeout": c["timeout"],
                "other": len(mine) - sum(c[k] for k in ("killed", "survived", "equivalent", "no tests", "timeout")),
                "score": round(c["killed"] / live, 4) if live else None,
            }
        seen = {r["function"] for r in rows if r["module"] == m}
        out[m]["functions_without_mutants"] = [f for f in functions(REPO / m) if f not in seen]
    return out


def report(summary: dict, rows: list[dict], seconds: float, machine: str, jobs: int) -> str:
    head = (
        "# Mutation testing of the formula modules\n\n"
        'Regenerate: `make mutation` (benchmarks/mutation.py; definitions: docs/contributing.md, "Mutation '
        f'testing"). Tree: {{COMMIT}}. Machine: {machine}. Run time: {seconds / 60:.1f} min ({jobs} test processes '
        "at once, torch on one thread each).\n\n"
        "Score = killed / (mutants - equivalent). Critical = losses, custom gradients, folds, exports "
        "(`CRITICAL` in benchmarks/mutation.py).\n\n"
        "| module | mutants | killed | survived | equivalent | no tests | timeout | other | score | critical: mutants "
        "| critical: not killed | critical score |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = ""
    for m, s in summary.items():
        a, c = s["all"], s["critical"]
        score = f"{a['score']:.1%}" if a["score"] is not None else "n/a"
        cscore = f"{c['score']:.1%}" if c["score"] is not None else "n/a"
        body += (
            f"| `{m}` | {a['mutants']} | {a['killed']} | {a['survived']} | {a['equivalent']} | {a['no_tests']} "
            f"| {a['timeout']} | {a['other']} | {score} | {c['mutants']} "
            f"| {c['mutants'] - c['killed'] - c['equivalent']} | {cscore} |\n"
        )
    tail = "\n## Survivors and untested mutants\n\n"
    left = [r for r in rows if r["status"] not in ("killed", "segfault", "equivalent")]
    tail += "".join(f"- `{r['module']}` `{r['function']}` ({r['status']}): `{r.get('mutation', '')}`\n" for r in left)
    tail += "\n## Equivalent mutants\n\n"
    tail += "".join(
        f"- `{r['module']}` `{r['function']}`: `{r['mutation']}`: {r['reason']}\n"
        for r in rows
        if r["status"] == "equivalent"
    )
    seen = {(r["module"], r["function"], r.get("mutation")) for r in rows}
    stale = [e for e in load_equivalent() if e["module"] in summary and key(e) not in seen]
    if stale:  # a listed equivalent whose mutant is gone (killed, or the line changed): remove it from the file
        tail += "\n## Listed equivalents that match no surviving mutant\n\n"
        tail += "".join(f"- `{e['module']}` `{e['function']}`: `{e['mutation']}`\n" for e in stale)
    tail += "\n## Functions that get no mutant\n\n"
    tail += "".join(
        f"- `{m}`: {', '.join(f'`{f}`' for f in s['functions_without_mutants'])}\n"
        for m, s in summary.items()
        if s["functions_without_mutants"]
    )
    return head + body + tail


def reclassify(path: Path) -> None:
    """The same mutants, their equivalence judged again from mutation_equivalent.yaml (the run is not repeated)."""
    if not path.exists():
        sys.exit(f"{path}: no report to reclassify; run `make mutation` first")
    data = json.loads(path.read_text())
    rows = data["mutants"]
    for r in rows:
        if r["status"] == "equivalent":
            r["status"] = "survived"
            r.pop("reason", None)
    classify(rows, load_equivalent())
    modules = list(data["modules"])
    summary = summarise(rows, modules)
    at = data.get("commit", "e222941 (before the report recorded it)")
    write_report(path.parent, "mutation", summary, rows, data["seconds"], data["machine"], data.get("jobs", 1), at)


def load_equivalent() -> list[dict]:
    return (yaml.safe_load(EQUIVALENT.read_text()) or []) if EQUIVALENT.exists() else []


def write_report(
    out: Path, stem: str, summary: dict, rows: list[dict], seconds: float, where: str, jobs: int, at: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    body = {"machine": where, "seconds": round(seconds), "jobs": jobs, "commit": at, "modules": summary}
    body["mutants"] = rows
    (out / f"{stem}.json").write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n")
    (out / f"{stem}.md").write_text(report(summary, rows, seconds, where, jobs).replace("{COMMIT}", at))
    print((out / f"{stem}.md").read_text().split("\n## ")[0])


def commit() -> str:
    """HEAD, marked when the tree had uncommitted changes (the run mutates the working tree as it is)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    return head.strip() + (" + uncommitted changes" if dirty.strip() else "")


def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        "unknown CPU",
    )
    return f"{os.cpu_count()} cores of {cpu}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=list(MODULES), help="modules to mutate (default: every one)")
    p.add_argument("--work", type=Path, default=Path("/tmp/saelab-mutation"), help="scratch copy of the tree")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="mutation.md / .json go here")
    p.add_argument("--jobs", type=int, default=2, help="test processes at once (each on one thread)")
    p.add_argument("--tests", nargs="*", default=TESTS, help="pytest selection (default: TESTS, the formula tests)")
    p.add_argument(
        "--reclassify",
        action="store_true",
        help="no run: read --out's mutation.json, apply mutation_equivalent.yaml again and rewrite the report",
    )
    args = p.parse_args()
    unknown = [m for m in args.only if m not in MODULES]
    if unknown:
        sys.exit(f"--only: {unknown} are not formula modules (MODULES: {', '.join(MODULES)})")
    if args.reclassify:
        return reclassify(args.out / "mutation.json")
    tree = commit()
    copy_tree(args.work)
    write_config(args.work, args.only, args.tests)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["SAELAB_SAELENS_PYTHON"] = str(REPO / ".venv-saelens" / "bin" / "python")
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--mutmut", "run", "--max-children", str(args.jobs)]
    subprocess.run(cmd, cwd=args.work, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    rows = results(args.work, args.only)
    classify(rows, load_equivalent())
    summary = summarise(rows, args.only)
    stem = "mutation" if args.only == list(MODULES) and args.tests == TESTS else "mutation_partial"
    write_report(args.out, stem, summary, rows, seconds, machine(), args.jobs, tree)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mutmut"]:  # mutmut's own command line, with torch.no_grad() treated as neutral
        neutral_decorators()
        from mutmut.__main__ import cli

        sys.argv = ["mutmut", *sys.argv[2:]]
        cli()
    elif sys.argv[1:2] == ["--diffs"]:  # {mutant: diff} as JSON, run inside the work tree
        from mutmut.__main__ import find_mutant, get_diff_for_mutant

        print(json.dumps({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in sys.argv[2:]}))
    else:
        main()
