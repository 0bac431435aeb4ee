"""Multi-process training: torchrun with 2 CPU processes (gloo) equals one process on the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from saelab.io import load_weights
from tests.conftest import make_cache

REPO = Path(__file__).resolve().parents[1]
SAE = dict(
    expansion=4,
    l1_coeff=0.1,
    lr=3e-3,
    batch_size=256,
    n_tokens=256 * 60,
    resample_every=256 * 20,
    resample_window=256 * 20,
    resample_stop=1.0,
    resample_threshold=0.05,
    lr_warmup_tokens=256 * 5,
    log_every=5,
    checkpoint_every=0,
    device="cpu",
)


def ddp_cmd(tmp, name):
    return [
        "-m",
        "stages.train",
        "--seed",
        "3",
        "--params",
        str(tmp / "params.yaml"),
        "--activations",
        str(tmp / "cache"),
        "--out",
        str(tmp / f"sae-{name}"),
        "--live",
        str(tmp / f"live-{name}"),
        "--metrics",
        str(tmp / f"m-{name}.json"),
        "--timing",
        str(tmp / f"t-{name}.json"),
        "--checkpoints",
        str(tmp / f"ck-{name}"),
    ]


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not installed"
)
@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
@pytest.mark.slow(20)
def test_two_gloo_processes_match_one_process(tmp_path, architecture):
    """Final weights of a 2-process DDP run equal a 1-process run within float tolerance, resampling included
    (TopK: its AuxK dead set too, from fire counts summed over ranks every step)."""
    make_cache(tmp_path / "cache", n_tokens=8000, d=32, n_ctx=20, shard_tokens=2000, row_group_tokens=500)
    sae = SAE | {
        "architecture": architecture,
        "resample": "anthropic",
        "topk": {"k": 8, "dead_tokens": 256 * 4},
        "jumprelu": {"l0_coeff": 0.1, "bandwidth": 0.05, "threshold_init": 0.05},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"sae": sae, "activations": {"bos": "include"}}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *ddp_cmd(tmp_path, "one")], cwd=REPO, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", *ddp_cmd(tmp_path, "two")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x 2 (from step 0)" in two.stderr
    a = load_weights(tmp_path / "sae-one/sae.safetensors")
    b = load_weights(tmp_path / "sae-two/sae.safetensors")
    # JumpReLU's step is discontinuous: float rounding in DDP's gradient all-reduce can flip a pre-activation
    # sitting on its threshold, so its weights agree to 1e-3 (seen: 2e-4), the continuous ones to 1e-4
    # TopK's selection is discontinuous too: a near-tie flipped by rounding can move the runs apart, which an
    # earlier version of the sparse step hit on another CPU (docs/metrics.md, "TopK's sparse step")
    tol = 1e-3 if architecture == "jumprelu" else 1e-4
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=tol), (k, (a[k] - b[k]).abs().max())
    m1 = yaml.safe_load((tmp_path / "m-one.json").read_text())
    m2 = yaml.safe_load((tmp_path / "m-two.json").read_text())
    assert m1["n_resampled"] == m2["n_resampled"] and m2["world_size"] == 2
    if architecture != "jumprelu":  # its tied init leaves no feature below the 5% bar here
        assert m1["n_resampled"] > 0
