"""Threads per process (saelab.threads; docs/usage.md, "Threads"): SAELAB_THREADS, CPU affinity and cgroup
quota, the split between `dvc queue` workers, and a bad value refused by a stage before any work."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saelab import threads
from saelab.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_cores_is_the_affinity_lowered_by_a_cgroup_quota(tmp_path):
    quota = tmp_path / "cpu.max"
    assert threads.cores(tmp_path / "absent") == _affinity()
    quota.write_text("max 100000\n")
    assert threads.cores(quota) == _affinity()
    quota.write_text("50000 100000\n")  # half a core: at least one thread
    assert threads.cores(quota) == 1
    quota.write_text(f"{(_affinity() + 3) * 100000} 100000\n")  # a quota above the affinity does not add cores
    assert threads.cores(quota) == _affinity()
    quota.write_text("150000 100000\n")  # 1.5 cores: a second thread for the half core
    assert threads.cores(quota) == min(2, _affinity())
    for bad in ("", "max", "abc 100000", "100000 0"):  # unreadable quotas are ignored, not fatal
        quota.write_text(bad)
        assert threads.cores(quota) == _affinity(), bad


def _worker(proc: Path, pid: int, root: str, num: int, celery: bool = True) -> None:
    """A fake /proc/<pid>/cmdline of DVC's queue worker ``num`` of the repository ``root``: as celery retitles it
    (one string), or as spawned (NUL-separated arguments)."""
    wdir = os.path.join(root, ".dvc", "tmp", "exps", "celery")
    name = f"dvc-exp-{hashlib.sha256(wdir.encode()).hexdigest()[:6]}-{num}@localhost"
    (proc / str(pid)).mkdir()
    args = (
        [f"[celeryd: {name}:MainProcess] -active- (exp queue-worker {name} --clean)", ""]
        if celery
        else ["/x/python", "/x/dvc", "exp", "queue-worker", name, ""]
    )
    (proc / str(pid) / "cmdline").write_bytes("\0".join(args).encode())


def test_queue_workers_counts_the_repositorys_distinct_workers(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    assert threads.queue_workers("/repo/a", proc) == 1  # none running: the process is alone
    _worker(proc, 10, "/repo/a", 1)
    _worker(proc, 11, "/repo/a", 1, celery=False)  # its spawning wrapper: one worker
    _worker(proc, 12, "/repo/a", 2)
    _worker(proc, 13, "/repo/b", 1)  # another repository's queue
    _worker(proc, 14, "/repo/b", 2, celery=False)  # seen only as spawned (NUL-separated arguments)
    (proc / "self").mkdir()  # not a pid: skipped
    assert threads.queue_workers("/repo/a", proc) == 2
    assert threads.queue_workers("/repo/b", proc) == 2
    assert threads.queue_workers("", proc) == 1  # outside a DVC stage (no DVC_ROOT)


def test_queue_workers_reads_dvc_root(tmp_path, monkeypatch):
    """DVC sets DVC_ROOT for every stage it runs: the repository whose workers are counted."""
    proc = tmp_path / "proc"
    proc.mkdir()
    _worker(proc, 10, "/repo/a", 1)
    _worker(proc, 11, "/repo/a", 2)
    monkeypatch.setenv("DVC_ROOT", "/repo/a")
    assert threads.queue_workers(proc=proc) == 2
    monkeypatch.delenv("DVC_ROOT")
    assert threads.queue_workers(proc=proc) == 1


def test_threads_splits_the_cores_between_queue_workers(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 8)
    monkeypatch.setattr(threads, "torch_default", lambda: 8)
    for workers, expected in [(1, 8), (2, 4), (3, 2), (16, 1)]:
        monkeypatch.setattr(threads, "queue_workers", lambda w=workers: w)
        assert threads.threads() == expected
    assert threads.threads(jobs=4) == 2  # an explicit share (pytest-xdist's workers) instead of the queue's
    monkeypatch.setattr(threads, "queue_workers", lambda: 1)
    monkeypatch.setattr(threads, "torch_default", lambda: 4)  # physical cores (or OMP_NUM_THREADS) below affinity
    assert threads.threads() == 4
    monkeypatch.setattr(threads, "cores", lambda: 2)  # affinity or quota below torch's default
    assert threads.threads() == 2
    monkeypatch.setenv(threads.ENV, "3")  # the variable wins over the split
    assert threads.threads() == 3
    monkeypatch.setenv(threads.ENV, "")  # empty = unset
    assert threads.threads() == 2


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_thread_count_is_refused_with_the_fix(monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(InputError, match=rf"SAELAB_THREADS='{value}'.*positive integer.*unset it for the default"):
        threads.threads()


def test_configure_sets_torch_pyarrow_and_child_processes(monkeypatch):
    import pyarrow

    before, arrow_before = torch.get_num_threads(), pyarrow.cpu_count()
    monkeypatch.setenv(threads.ENV, "1" if before != 1 else "2")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after the test
        monkeypatch.setenv(var, "7")
    try:
        n = threads.configure()
        assert n == int(os.environ[threads.ENV]) == torch.get_num_threads() == pyarrow.cpu_count()
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(n)
    finally:
        torch.set_num_threads(before)
        pyarrow.set_cpu_count(arrow_before)


def test_a_stage_refuses_a_bad_thread_count_before_any_work(tmp_path):
    """The text stage with SAELAB_THREADS=0: exit 2 with the variable's name, and no output written."""
    env = {**os.environ, threads.ENV: "0", "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "text"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.text",
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "m.json"),
            "--timing",
            str(tmp_path / "t.json"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    assert "SAELAB_THREADS='0'" in run.stderr
    assert not out.exists() and not (tmp_path / "m.json").exists()
