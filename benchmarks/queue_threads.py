"""`dvc exp run --queue` with 2 workers vs 1 on this machine, threads split or not (docs/usage.md, "Threads").

    python benchmarks/queue_threads.py --out benchmarks/results/queue_threads_cpu.json [--work /tmp/queue-threads]

A copy of the pipeline at the test suite's tiny params (tests/tiny_params.yaml), made heavier where
threads matter (a 128-wide LM, 4,096 latents, 61,440 training tokens per SAE, two seeds), is reproduced
up to its train stages and committed; then three settings each queue two experiments of the train
stages (``dvc exp run --queue -S sae.l1_coeff=a,b train``: two SAEs each, on two ``l1_coeff`` values no
other setting uses, so DVC's run cache restores nothing) and time them from ``dvc queue start`` until
the queue is empty:

- ``j1``: ``dvc queue start -j 1``: one experiment at a time, each stage with every core;
- ``j2``: ``-j 2``: two at once, each stage with cores // 2 threads (saelab.threads counts the workers);
- ``j2_oversubscribed``: ``-j 2`` with ``SAELAB_THREADS`` = every core in both (what happened before
  the split: two processes each with every core).

Only training is queued, the torch-bound work the split is for (a full experiment also reruns
evaluate and the analyses, minutes each at this width). The threads each train stage used are read
from its log. One run per setting, in that order, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from reader import cpu_model  # noqa: E402

from saelab import threads  # noqa: E402
from tests.test_pipeline import git, make_repo, run_cmd, wait_queue_empty  # noqa: E402

HEAVIER = {
    "lm": {"d_model": 128, "d_mlp": 512, "n_heads": 4},
    "activations": {"n_tokens": 40_000},
    "sae": {"expansion": 32, "batch_size": 2048, "n_tokens": 61_440, "resample_every": 20_480, "log_every": 10},
}
SETTINGS = {  # name: (workers, SAELAB_THREADS or None, the two l1 values)
    "j1": (1, None, (0.31, 0.32)),
    "j2": (2, None, (0.33, 0.34)),
    "j2_oversubscribed": (2, "every core", (0.35, 0.36)),
}


def run_setting(repo: Path, workers: int, env_threads: str | None, values, seen: set) -> dict:
    """One setting's two experiments; ``seen``: the tasks of earlier settings, which `dvc queue status` still lists."""
    run_cmd(["dvc", "exp", "run", "--queue", "-S", "sae.l1_coeff=" + ",".join(map(str, values)), "train"], repo)
    env = {} if env_threads is None else {threads.ENV: str(threads.cores())}
    start = time.perf_counter()
    run_cmd(["dvc", "queue", "start", "-j", str(workers)], repo, env_extra=env)
    status = wait_queue_empty(repo, 3600)
    seconds = time.perf_counter() - start
    names = [line.split()[0] for line in status.splitlines()[1:] if "Success" in line and line.split()[0] not in seen]
    seen.update(names)
    logs = {n: run_cmd(["dvc", "queue", "logs", n], repo, check=False).stdout for n in names}
    stopped = run_cmd(["dvc", "queue", "stop", "--kill"], repo, check=False)  # no worker lives on into the next setting
    time.sleep(12 if stopped.returncode == 0 else 1)
    return {
        "workers": workers,
        "SAELAB_THREADS": env.get(threads.ENV),
        "l1_coeff": list(values),
        "seconds": seconds,
        "succeeded": len(names),
        "failed": status.count("Failed"),  # the queue's, earlier settings included
        "train_threads": sorted(int(t) for log in logs.values() for t in re.findall(r"\[train\] threads: (\d+)", log)),
        "train_seconds": sorted(
            float(s) for log in logs.values() for s in re.findall(r"\[train\] done in ([0-9.]+) s", log)
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/queue-threads"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/queue_threads_cpu.json"))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    threads.configure()  # SAELAB_THREADS or every core given (docs/usage.md, "Threads")
    shutil.rmtree(args.work, ignore_errors=True)
    repo = make_repo(args.work, HEAVIER)
    start = time.perf_counter()
    run_cmd(["dvc", "repro", "train"], repo)
    baseline = time.perf_counter() - start
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline", "--allow-empty")
    results, seen = {}, set()
    for name in args.settings:
        print(f"== {name}", flush=True)
        results[name] = run_setting(repo, *SETTINGS[name], seen)
        print(json.dumps(results[name]), flush=True)
    report = {
        "hardware": f"{cpu_model()}, {threads.cores()} cores",
        "command": "python benchmarks/queue_threads.py " + " ".join(sys.argv[1:]),
        "params": HEAVIER,
        "baseline_repro_seconds": baseline,
        "results": results,
    }
    if "j1" in results and "j2" in results:
        report["j2_speedup_over_j1"] = results["j1"]["seconds"] / results["j2"]["seconds"]
    if "j2" in results and "j2_oversubscribed" in results:
        report["split_speedup_over_oversubscribed"] = results["j2_oversubscribed"]["seconds"] / results["j2"]["seconds"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "params"}, indent=1))


if __name__ == "__main__":
    main()
