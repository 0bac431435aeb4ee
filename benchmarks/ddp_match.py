"""Does a 2-process (gloo) run of a checkout match its 1-process run? tests/test_ddp.py's TopK setup, varied.

    python benchmarks/ddp_match.py REPO [resample:steps[:seed] ...]      # e.g. none:60 none:17:3 anthropic:60
    # REPO: a checkout (e.g. a `git worktree`) whose src/ is tested; the seed defaults to the test's 3

For each setting it trains the test's tiny TopK SAE (d 32, k 8, AuxK window 4 steps) once in one process and
once under torchrun with 2 processes, and prints the largest weight difference per tensor and the resample
counts. Written to diagnose the withdrawn sparse-step change (docs/metrics.md, "TopK's sparse step"): a
difference that stays at float rounding (~1e-7) and then jumps in one step, for one seed only, points to a
top-k near-tie flipped by rounding rather than to a wrong gradient. Runs are kept under /tmp/ddp_match/.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

if len(sys.argv) < 2:
    raise SystemExit(__doc__)
REPO = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(REPO), str(REPO / "src")]

from saelab.io import load_weights  # noqa: E402
from tests.conftest import make_cache  # noqa: E402
from tests.test_ddp import SAE, ddp_cmd  # noqa: E402

torchrun = str(Path(sys.executable).parent / "torchrun")
env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


def with_seed(cmd: list, seed: str) -> list:
    return [seed if i and cmd[i - 1] == "--seed" else v for i, v in enumerate(cmd)]


for setting in sys.argv[2:] or ["none:60"]:
    resample, steps, seed = (setting.split(":") + ["3"])[:3]
    tmp = Path(f"/tmp/ddp_match/{REPO.name}-{resample}-{steps}-{seed}")
    tmp.mkdir(parents=True, exist_ok=True)
    if not (tmp / "cache").exists():
        make_cache(tmp / "cache", n_tokens=8000, d=32, n_ctx=20, shard_tokens=2000, row_group_tokens=500)
    sae = SAE | {
        "architecture": "topk",
        "resample": resample,
        "n_tokens": 256 * int(steps),
        "topk": {"k": 8, "dead_tokens": 256 * 4},
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump({"sae": sae, "activations": {"bos": "include"}}))
    one = subprocess.run(
        [sys.executable, *with_seed(ddp_cmd(tmp, "one"), seed)], cwd=REPO, env=env, capture_output=True, text=True
    )
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", *with_seed(ddp_cmd(tmp, "two"), seed)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if one.returncode or two.returncode:
        print(setting, "failed:", one.stderr[-500:], two.stderr[-500:])
        continue
    a, b = (load_weights(tmp / f"sae-{n}/sae.safetensors") for n in ("one", "two"))
    m1, m2 = (json.loads((tmp / f"m-{n}.json").read_text()) for n in ("one", "two"))
    diff = {k: f"{float((a[k] - b[k]).abs().max()):.2e}" for k in a}
    print(setting, diff, "resampled", m1.get("n_resampled"), m2.get("n_resampled"), flush=True)
