"""Does the thread count change the pipeline's outputs? The tiny pipeline at SAELAB_THREADS=1 and =2.

    python benchmarks/threads_determinism.py --out benchmarks/results/threads_determinism_cpu.json

Two copies of the pipeline at the test suite's tiny params (tests/tiny_params.yaml, as
tests/test_pipeline.py builds them), each reproduced with ``dvc repro`` under one thread count;
the md5 of every output in the two ``dvc.lock`` files (timings/ aside: wall times) is compared, and
for each differing metrics file the keys whose values differ, with both values.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from tests.test_pipeline import lock_outputs, make_repo, run_cmd  # noqa: E402


def outputs(repo: Path) -> dict:
    """Path -> md5 of the repository's outputs in dvc.lock, timings/ aside."""
    outs = lock_outputs(yaml.safe_load((repo / "dvc.lock").read_text()))
    return {path: md5 for path, md5 in outs.items() if not path.startswith("timings")}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/threads-determinism"))
    p.add_argument("--threads", type=int, nargs=2, default=(1, 2))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/threads_determinism_cpu.json"))
    args = p.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    repos = {}
    for n in args.threads:
        repos[n] = make_repo(args.work / f"threads-{n}")
        run_cmd(["dvc", "repro"], repos[n], env_extra={threads.ENV: str(n)})
    a, b = (outputs(repos[n]) for n in args.threads)
    differ = sorted(k for k in a if a[k] != b.get(k))
    values = {}
    for path in differ:
        if path.endswith(".json"):
            va, vb = (flat(json.loads((repos[n] / path).read_text())) for n in args.threads)
            values[path] = {k: [va.get(k), vb.get(k)] for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)}
    report = {
        "hardware": f"{cpu_model()}, {threads.cores()} cores",
        "command": "python benchmarks/threads_determinism.py " + " ".join(sys.argv[1:]),
        "threads": list(args.threads),
        "outputs_compared": len(a),
        "outputs_differing": differ,
        "metrics_differing": values,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
