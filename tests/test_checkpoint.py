"""Checkpoint and resume: a run killed with SIGKILL and rerun ends bitwise equal to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from saelab.config import SAEConfig
from saelab.io import load_weights
from saelab.saes.base import SAE
from saelab.training.checkpoint import Checkpointer
from saelab.training.trainer import Trainer
from tests.conftest import make_cache

REPO = Path(__file__).resolve().parents[1]
SAE_PARAMS = dict(
    expansion=8,
    l1_coeff=0.1,
    batch_size=256,
    n_tokens=256 * 1200,
    resample_every=256 * 200,
    resample_window=256 * 100,
    resample_stop=0.8,
    lr_warmup_tokens=256 * 10,
    log_every=10,
    checkpoint_every=50,
    device="cpu",
)


def _train_cmd(tmp, name):
    return [
        sys.executable,
        "-m",
        "stages.train",
        "--seed",
        "0",
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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    make_cache(tmp / "cache", n_tokens=20000, d=128, n_ctx=20, shard_tokens=5000, row_group_tokens=1000)
    (tmp / "params.yaml").write_text(yaml.safe_dump({"sae": SAE_PARAMS, "activations": {"bos": "include"}}))
    return tmp


@pytest.mark.slow(65)
def test_kill_9_then_resume_gives_identical_weights(setup):
    """SIGKILL after a checkpoint, rerun: the run resumes and its final weights equal an uninterrupted run's."""
    tmp = setup
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(_train_cmd(tmp, "full"), cwd=REPO, env=env, check=True, capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(tmp, "killed"), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not list((tmp / "ck-killed").glob("step-*/state.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp / "sae-killed").exists(), "killed before the end: no finished output may exist"
    ck = list((tmp / "ck-killed").glob("step-*"))
    assert ck, "a checkpoint was written before the kill"

    res = subprocess.run(_train_cmd(tmp, "killed"), cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stderr and "(from step 0)" not in res.stderr
    a = load_weights(tmp / "sae-full" / "sae.safetensors")
    b = load_weights(tmp / "sae-killed" / "sae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    curve = (tmp / "live-killed/plots/metrics/l0.tsv").read_text().splitlines()
    assert len(curve) == 1 + 1200 // 10, "the resumed curve holds the steps logged before the kill too"
    assert not (tmp / "ck-killed").exists(), "checkpoints are cleared after success"


def test_checkpoint_of_another_run_is_ignored(tmp_path):
    """A checkpoint whose fingerprint differs is not resumed from."""
    Checkpointer(tmp_path, "run-a", 1).save({"x": torch.zeros(1)}, {"step": 5})
    assert Checkpointer(tmp_path, "run-b", 1).load() is None
    assert Checkpointer(tmp_path, "run-a", 1).load()[1]["step"] == 5


def _poisoned_at_step_7(skip):
    for i in range(1000):
        x = torch.randn(256, 8)
        if i == 7:
            x[3, 2] = float("inf")
        yield x


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    """Non-finite activations stop training with the step and token range; the last checkpoint survives."""
    cfg = SAEConfig(**(SAE_PARAMS | {"checkpoint_every": 5, "n_tokens": 256 * 20}))
    trainer = Trainer(SAE(8, 64, seed=0, l1_coeff=cfg.l1_coeff), cfg, torch.device("cpu"))
    ckpt = Checkpointer(tmp_path, "fp", cfg.checkpoint_every)

    with pytest.raises(FloatingPointError, match=r"non-finite activations in cache tokens \[1792, 2048\) at step 7"):
        trainer.run(_poisoned_at_step_7, checkpointer=ckpt)
    assert ckpt.load()[1]["step"] == 5


def test_device_side_nan_check_stops_before_the_next_checkpoint(tmp_path):
    """The accelerator path (no host sync per step), run on CPU: NaN at step 7 is caught at the step-10
    check, named by its step range, and the step-5 checkpoint is the one kept."""
    cfg = SAEConfig(**(SAE_PARAMS | {"checkpoint_every": 5, "log_every": 5, "n_tokens": 256 * 20}))
    trainer = Trainer(SAE(8, 64, seed=0, l1_coeff=cfg.l1_coeff), cfg, torch.device("cpu"))
    trainer.check_each_step = False
    ckpt = Checkpointer(tmp_path, "fp", cfg.checkpoint_every)

    with pytest.raises(FloatingPointError, match=r"between steps 5 and 10 \(cache tokens \[1280, 2560\)\)"):
        trainer.run(_poisoned_at_step_7, checkpointer=ckpt)
    assert ckpt.load()[1]["step"] == 5
